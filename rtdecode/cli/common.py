"""What several commands share: argparse value types and the held-out split of calibrate's GLM tuning.

The types keep their underscore names: argparse names a type in its "invalid _shape value" message."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.threads import MAX_THREADS


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must look like 100x100x52, got {text!r}")
    return parts  # type: ignore[return-value]


def _denoise(text: str) -> str:
    from rtdecode.base.config import check_denoise

    try:
        return check_denoise(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_list(text: str) -> list[int]:
    try:
        runs = [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        runs = []
    if not runs or min(runs) < 1:
        raise argparse.ArgumentTypeError(f"expected run numbers from 1, e.g. 1,2,3, got {text!r}")
    return runs


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"must be seconds after onset, more than 0 and under 100, got {text}")
    return value


def _threads(text: str) -> int:
    if not (text.isdigit() and int(text) <= MAX_THREADS):
        raise argparse.ArgumentTypeError(f"must be 0 (every core) to {MAX_THREADS} threads, got {text!r}")
    return int(text)


def tuning_split(session: Path, subject: str, holdout: str | None) -> tuple[list[int] | None, set[str]]:
    """What calibrate's GLM tuning may see: the same held-out images as training leaves out (calibration/splits.py),
    and with ``runs:N,M`` the other runs only."""
    import numpy as np

    from calibration.data import SubjectData
    from calibration.splits import parse_holdout
    from rtdecode.base.recorded import session_folder, session_trials

    images, runs = session_trials(session_folder(session))
    shown = SubjectData(subject, np.zeros((len(images), 0)), images, np.zeros((len(images), 0, 0)), runs=np.asarray(runs))
    held = parse_holdout(holdout, shown)
    if holdout is not None and holdout.startswith("runs:"):
        out = {int(r) for r in holdout[5:].split(",") if r.strip()}
        return sorted(set(runs) - out), held
    return None, held
