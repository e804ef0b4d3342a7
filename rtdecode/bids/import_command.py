"""``rtdecode session import`` (docs/session-folder.md, "Bring recorded data in").

Its options are declared with the ``session`` command in rtdecode/cli.py (``--run``, ``--mask``,
``--image-column``, ``--task``; ``--tr`` is shared with finalize): this package loads nibabel, which
the CLI must not pay for at every start."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rtdecode.errors import ConfigError

LABEL = re.compile(r"\A[A-Za-z0-9]{1,32}\Z")
DEFAULT_TR = 1.5  # Real-time MindEye's; another TR is worth a line


def run(args: argparse.Namespace) -> int:
    """Read and check every run, then write them into the session folder; one line per run."""
    from rtdecode.bids.importer import plan_import, write_import
    from rtdecode.bids.inputs import SessionImportError, read_run
    from rtdecode.glm.offline import session_folder
    from rtdecode.storage import FolderLock

    where = "rtdecode session import"
    if not args.import_runs:
        raise ConfigError(f"{where}: give each run as --run BOLD EVENTS [CONFOUNDS]")
    bad = [g for g in args.import_runs if len(g) not in (2, 3)]
    if bad:
        raise ConfigError(f"{where}: --run takes BOLD EVENTS [CONFOUNDS] (2 or 3 files), got {len(bad[0])}: {bad[0]}")
    stray = [name for name, value in (("--runs", args.runs), ("--gallery", args.gallery), ("--config", args.config))
             if value is not None]
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
