"""Where a finalised run's files go (no reading or writing here)."""

from __future__ import annotations

from pathlib import Path

from rtdecode.base.session import SessionFolder


def bold_path(folder: SessionFolder, run: int) -> Path:
    """The raw 4-D run; written last, so its presence means the run is finalised whole."""
    return folder.path / "func" / f"{folder.prefix(run)}_bold.nii.gz"
