"""In-process preprocessing: rigid motion correction, registration, resampling, masking and QA."""
