"""``rtdecode simulate``: simulated subjects, stimuli and scanner runs (no scanner needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.cli.common import _shape


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``simulate run|betas|stimuli``."""
    p = sub.add_parser("simulate", help="simulated subjects, stimuli and scanner runs (no scanner needed)")
    sim = p.add_subparsers(dest="what", required=True)
    q = sim.add_parser("run", help="write a task run of a simulated subject into a folder at TR pace")
    q.add_argument("--out", required=True, type=Path, help="folder to write into (the watch folder)")
    q.add_argument("--truth", type=Path, default=None, help="folder for ground truth (events, motion, true betas)")
    q.add_argument("--stimuli", type=Path, default=None, help="folder to write the shown images into (PNG)")
    q.add_argument("--run", type=int, default=1, help="which run of the visit (1-based)")
    q.add_argument("--runs", type=int, default=11, help="runs in the visit's plan")
    q.add_argument("--volumes", type=int, default=192)
    q.add_argument("--trials", type=int, default=63)
    q.add_argument("--rest", action="store_true", help="no task: motion and noise only")
    q.add_argument("--shape", type=_shape, default=(100, 100, 52), help="voxels, e.g. 100x100x52")
    q.add_argument("--voxel-mm", type=float, default=2.0)
    q.add_argument("--tr", type=float, default=1.5)
    q.add_argument("--speedup", type=float, default=1.0, help="write N times faster than real time")
    q.add_argument("--format", choices=["mosaic", "enhanced", "nifti"], default="mosaic")
    q.add_argument("--series", type=int, default=None, help="DICOM series number (default: the run number)")
    q.add_argument("--pattern", default=None, help="file-name pattern (default: Siemens real-time export)")
    q.add_argument("--max-mm", type=float, default=1.0)
    q.add_argument("--max-deg", type=float, default=1.0)
    q.add_argument("--subject-seed", type=int, default=1, help="which new person of --seed: 1 is sim51 at seed 0 "
                   "(sim151 at seed 1), never a pretraining dataset's person (docs/simulated-brain.md)")
    q.add_argument("--first-person", type=int, default=None, help="number (and seed) of the person for --subject-seed "
                   "1, sim<N>, e.g. a pretraining person's brain on purpose")
    q.add_argument("--participant", default="01/01", help="subject/session labels: the series' SeriesInstanceUID is "
                   "theirs (another participant's series is set aside by the scanner side)")
    q.add_argument("--voxels", type=int, default=2000, help="visual voxels of the simulated subject (at 2 mm)")
    q.add_argument("--reliability", type=float, default=0.3, help="median single-trial reliability")
    q.add_argument("--seed", type=int, default=0)
    q = sim.add_parser("betas", help="write trial-level betas for several subjects and sessions")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--subjects", type=int, default=4)
    q.add_argument("--sessions", type=int, default=1)
    q.add_argument("--runs", type=int, default=11)
    q.add_argument("--trials", type=int, default=63)
    q.add_argument("--reliability", type=float, default=0.3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--role", choices=("pretrain", "new", "new-overlap", "any"), default="pretrain",
                   help="pretrain: no image of the built-in test pool nor of the new-person pool; new: a person to "
                        "calibrate, whose repeated (held-out) images come from the test pool and the rest from the "
                        "new-person pool (needs --images 2400 for full sessions); new-overlap: the rest from every "
                        "training image, as before issue 35; any: every image (docs/calibration.md)")
    q.add_argument("--images", type=int, default=1200, help="size of the built-in image set to draw from")
    q.add_argument("--first-person", type=int, default=None,
                   help="number (and seed) of the first person, sim<N>; default: new people for this --seed and "
                        "--role (pretrain sim01.., new sim51.., seed 1: sim101.., sim151..)")
    q = sim.add_parser("stimuli", help="write the built-in stimulus images as PNG")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("-n", type=int, default=1200)
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    """Write what ``args.what`` asks for (rtdecode.simulator.cli)."""
    from rtdecode.simulator.cli import simulate

    return simulate(args)
