"""``rtdecode glm`` (offline single-trial betas of a recorded session) and ``rtdecode glm-tune``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.errors import ConfigError
from rtdecode.cli.common import _denoise, _run_list, tuning_split


def add_glm_parser(sub: argparse._SubParsersAction) -> None:
    """``glm SESSION --out``: the offline GLM."""
    p = sub.add_parser("glm", help="single-trial betas of a recorded session folder (offline mode)")
    p.add_argument("session", type=Path, help="session folder (.../sub-XX/ses-YY)")
    p.add_argument("--out", type=Path, required=True, help="folder for betas.npy and trials.tsv")
    p.add_argument("--noise-model", choices=["ar1", "ols"], default="ar1")
    p.add_argument("--version", choices=["endofrun", "realtime"], default="endofrun",
                   help="whole-run estimates, or the real-time estimates replayed")
    p.add_argument("--tr", type=float, default=None, help="default: the TR the session was recorded or imported at, "
                   "else 1.5 s")
    p.add_argument("--delay", type=float, default=7.5, help="seconds after onset (realtime version)")
    p.add_argument("--tuning", type=Path, default=None,
                   help="model folder with glm_tuning.npz: its per-voxel HRFs and noise subtraction (docs/glm.md)")
    p.add_argument("--hrf", choices=("glover", "library"), default=None, help="default: library with --tuning")
    p.add_argument("--denoise", type=_denoise, default="auto", help="off | auto | N components (with --tuning)")
    p.set_defaults(func=_glm)


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    """``glm-tune SESSION --out``: each voxel's HRF, noise pool and count."""
    p = sub.add_parser("glm-tune", help="tune the GLM on a calibration session: each voxel's HRF, noise pool and count")
    p.add_argument("session", type=Path, help="session folder (.../sub-XX/ses-YY)")
    p.add_argument("--out", type=Path, required=True, help="folder for glm_tuning.npz and .json (the model folder)")
    p.add_argument("--tr", type=float, default=None, help="default: the TR the session was recorded or imported at, "
                   "else 1.5 s")
    p.add_argument("--runs", type=_run_list, default=None, help="tune on these runs only, e.g. 1,2,3 (default: all)")
    p.add_argument("--holdout", default=None, help="images left out of every criterion, as calibrate's --holdout: "
                   "runs:N,M, @FILE or id,id,... (default: none; calibrate leaves out its own held-out images)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="the session's own images, a folder of PNG or JPEG files named by image id, whose stand-in "
                        "tokens score the tuning (default: the ids are built-in stimulus ids)")
    p.set_defaults(func=_glm_tune)


def _glm(args: argparse.Namespace) -> int:
    """Write betas.npy and trials.tsv of a recorded session."""
    from rtdecode.glm.offline import write_offline_betas

    write_offline_betas(args.session, args.out, args.noise_model, args.version, args.tr, args.delay, args.tuning,
                        args.hrf, args.denoise)
    return 0


def _glm_tune(args: argparse.Namespace) -> int:
    """Tune the GLM on a session and write glm_tuning.npz."""
    from rtdecode.glm.tuning import describe, tune_session

    try:
        runs, held = tuning_split(args.session, "glm-tune", args.holdout) if args.holdout else (None, set())
        if args.runs is not None:
            runs = [r for r in args.runs if runs is None or r in runs]
        from calibration.build import standin_tokens

        if args.images is not None:
            from rtdecode.gallery.folder import folder_source

            folder_source(args.images)  # the folder checked before any fit (ids are looked up when scored)

        print(describe(tune_session(args.session, args.tr, out=args.out, runs=runs, held_out=held,
                                    features=lambda ids: standin_tokens(ids, folder=args.images))))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"rtdecode glm-tune: {exc}") from None
    print(f"GLM tuning -> {args.out / 'glm_tuning.npz'}")
    return 0
