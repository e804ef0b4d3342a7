"""Turning scanner files (DICOM mosaic, enhanced multi-frame, NIfTI) into volumes."""

from rtdecode.ingest.reader import Volume, read_volume

__all__ = ["Volume", "read_volume"]
