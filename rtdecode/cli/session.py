"""``rtdecode session finalize``: a recorded session folder's finished runs written as BIDS; ``rtdecode session
import``: recorded NIfTI runs, events and confounds brought into a session folder (docs/session-folder.md)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rtdecode.base.errors import ConfigError

LABEL = re.compile(r"\A[A-Za-z0-9]{1,32}\Z")
DEFAULT_TR = 1.5  # Real-time MindEye's; another TR is worth a line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``session finalize SESSION`` and ``session import SESSION --run BOLD EVENTS [CONFOUNDS] ...``."""
    p = sub.add_parser("session", help="a session folder: write its finished runs as BIDS (finalize), or bring "
                                       "recorded NIfTI runs in (import)")
    p.add_argument("action", choices=["finalize", "import"])
    p.add_argument("session", type=Path, help="the session folder (.../sub-XX/ses-YY)")
    p.add_argument("--runs", type=int, nargs="*", default=None,
                   help="finalize: only these runs (default: all in runs.tsv)")
    p.add_argument("--tr", type=float, default=None,
                   help="finalize and import: repetition time in s, for runs recorded without it")
    p.add_argument("--gallery", type=Path, default=None,
                   help="finalize: the shown images, copied into the dataset's stimuli/")
    p.add_argument("--config", type=Path, default=None,
                   help="finalize: the configuration rtdecode run ran with, to close a run it left open (default: "
                        "the session folder's config.toml)")
    p.add_argument("--close-anyway", action="store_true",
                   help="finalize: close a run left open even while its files wait unread in the watch folder "
                        "(they are dropped; default: restart rtdecode run to take them first)")
    p.add_argument("--run", dest="import_runs", nargs="+", action="append", default=None, metavar="FILE",
                   help="import: BOLD.nii[.gz] EVENTS.tsv [CONFOUNDS.tsv], once per run, in order")
    p.add_argument("--mask", type=Path, default=None, help="import: a 3-D NIfTI mask on the runs' grid")
    p.add_argument("--image-column", default="image", help="import: the events column naming each trial's image")
    p.add_argument("--task", default=None, help="import: the task label of a new session folder (default rt)")
    p.set_defaults(func=lambda args: _import(args) if args.action == "import" else _finalize(args))


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
        kept = _close_runs(folder, args.config, args.close_anyway)
        runs = [int(r["run"]) for r in folder.runs()] if args.runs is None else args.runs
        done = finalize_session(folder, [r for r in runs if r not in kept], args.tr, gallery=args.gallery)
    finally:
        lock.release()
    failed = len(kept)
    for run, what in done.items():
        if isinstance(what, str):
            failed += 1
            print(f"run {run}: not finalised: {what}")
        else:
            print(f"run {run}: {len(what)} files")
    print(f"BIDS dataset: {folder.root} (derivatives in {folder.root / 'derivatives' / 'rtdecode'})")
    return 1 if failed else 0


def _close_runs(folder, config_path: Path | None, close_anyway: bool) -> set[int]:
    """A run that ``rtdecode run`` left open (killed) is closed first: its end-of-run betas, its end on record.
    The runs kept open (their files still wait in the watch folder) are returned: they are not finalised."""
    from rtdecode.scanner.close import close_runs, session_config

    kept = set()
    for run, line in close_runs(folder, session_config(folder, config_path), close_anyway).items():
        print(f"run {run}: {line}")
        if line.startswith("left open: ") and "wait unread" in line:
            kept.add(run)
    return kept


def _import(args: argparse.Namespace) -> int:
    """Read and check every run, then write them into the session folder; one line per run. (rtdecode.bids loads
    nibabel: imported here, not at the CLI's start.)"""
    from rtdecode.base.recorded import session_folder
    from rtdecode.base.storage import FolderLock
    from rtdecode.bids.importer import plan_import, write_import
    from rtdecode.bids.inputs import SessionImportError, read_run

    where = "rtdecode session import"
    if not args.import_runs:
        raise ConfigError(f"{where}: give each run as --run BOLD EVENTS [CONFOUNDS]")
    bad = [g for g in args.import_runs if len(g) not in (2, 3)]
    if bad:
        raise ConfigError(f"{where}: --run takes BOLD EVENTS [CONFOUNDS] (2 or 3 files), got {len(bad[0])}: {bad[0]}")
    stray = [name for name, value in (("--runs", args.runs), ("--gallery", args.gallery), ("--config", args.config),
                                      ("--close-anyway", args.close_anyway or None)) if value is not None]
    if stray:
        raise ConfigError(f"{where}: {', '.join(stray)} belong to session finalize; the import takes --run, --mask, "
                          "--tr, --image-column and --task")
    if args.tr is not None and not 0 < args.tr < 100:
        raise ConfigError(f"{where}: --tr: expected seconds between 0 and 100, got {args.tr}")
    try:
        folder = session_folder(args.session)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if args.task is not None:
        if not LABEL.fullmatch(args.task):
            raise ConfigError(f"{where}: --task: expected 1 to 32 letters or digits, got {args.task!r}")
        if any((folder.path / "func").glob("*_events.tsv")) and args.task != folder.task:
            raise ConfigError(f"{where}: --task {args.task}, but {folder.path} holds task {folder.task}")
        folder.task = args.task
    lock = None
    try:
        runs = [read_run(Path(g[0]), Path(g[1]), Path(g[2]) if len(g) == 3 else None, args.tr, args.image_column)
                for g in args.import_runs]
        if folder.path.exists():  # an existing session: nobody else writes while it is read and written
            lock = FolderLock(folder.path, where).acquire()
        plan = plan_import(folder, runs, args.mask)
        if lock is None:
            lock = FolderLock(folder.path, where).acquire()
        written = write_import(folder, plan)
    except SessionImportError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    finally:
        if lock is not None:
            lock.release()
    for note in plan.notes:
        print(f"note: {note}")
    for i, r in enumerate(runs):
        if i in plan.skipped:
            print(f"{r.bold}: imported before as run {plan.skipped[i]}; skipped")
        else:
            print(f"run {plan.numbers[i]}: {r.bold} ({r.n_volumes} volumes, {len(r.events)} trials, TR {r.tr_s:g} s"
                  f"{f', {len(r.missing)} missing' if r.missing else ''})")
    print(f"{len(written)} run(s) imported into {folder.path}; mask: {int(plan.mask.sum())} voxels "
          f"({plan.mask_origin})")
    if abs(runs[0].tr_s - DEFAULT_TR) > 1e-6:
        print(f"TR is {runs[0].tr_s:g} s (kept: rtdecode glm, glm-tune and calibrate read it)")
    return 0
