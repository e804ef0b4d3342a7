"""Single-trial GLM: design (HRF, drift, LSS), pure estimators, and the incremental per-run shell."""
