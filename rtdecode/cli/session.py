"""``rtdecode session finalize``: a recorded session folder's finished runs written as BIDS."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``session finalize SESSION``."""
    p = sub.add_parser("session", help="a recorded session folder: write its finished runs as BIDS")
    p.add_argument("action", choices=["finalize"])
    p.add_argument("session", type=Path, help="the session folder (.../sub-XX/ses-YY)")
    p.add_argument("--runs", type=int, nargs="*", default=None, help="only these runs (default: all in runs.tsv)")
    p.add_argument("--tr", type=float, default=None, help="repetition time in s, for sessions recorded without it")
    p.add_argument("--gallery", type=Path, default=None, help="the shown images, copied into the dataset's stimuli/")
    p.add_argument("--config", type=Path, default=None,
                   help="the configuration rtdecode run ran with, to close a run it left open (default: the "
                        "session folder's config.toml)")
    p.set_defaults(func=_finalize)


def _finalize(args: argparse.Namespace) -> int:
    """Close what a killed run left open, then write the runs as BIDS; 1 if any failed."""
    from rtdecode.base.recorded import session_folder
    from rtdecode.bids import finalize_session

    try:
        folder = session_folder(args.session)
    except ValueError as exc:
        raise ConfigError(f"rtdecode session finalize: {exc}") from None
    if not (folder.path / "session.json").exists():
        raise ConfigError(f"rtdecode session finalize: {folder.path}: not a session folder (no session.json)")
    from rtdecode.base.storage import FolderLock

    lock = FolderLock(folder.path, "rtdecode session finalize").acquire()  # a live rtdecode run: one line, no start
    try:
        _close_runs(folder, args.config)
        done = finalize_session(folder, args.runs, args.tr, gallery=args.gallery)
    finally:
        lock.release()
    failed = 0
    for run, what in done.items():
        if isinstance(what, str):
            failed += 1
            print(f"run {run}: not finalised: {what}")
        else:
            print(f"run {run}: {len(what)} files")
    print(f"BIDS dataset: {folder.root} (derivatives in {folder.root / 'derivatives' / 'rtdecode'})")
    return 1 if failed else 0


def _close_runs(folder, config_path: Path | None) -> None:
    """A run that ``rtdecode run`` left open (killed) is closed first: its end-of-run betas, its end on record."""
    from rtdecode.scanner.close import close_runs, session_config

    for run, line in close_runs(folder, session_config(folder, config_path)).items():
        print(f"run {run}: {line}")
