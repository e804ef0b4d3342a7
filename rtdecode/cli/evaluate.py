"""``rtdecode evaluate``: score a decoded session as MindEye2 and Real-time MindEye do."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``evaluate SESSION --decoded``."""
    p = sub.add_parser("evaluate", help="score a decoded session as MindEye2 and Real-time MindEye do "
                                        "(docs/evaluation.md)")
    p.add_argument("session", type=Path, help="the session folder (.../sub-XX/ses-YY)")
    p.add_argument("--decoded", required=True, type=Path, help="the decoder's --out, or its folder for this session")
    p.add_argument("--weights", type=Path, default=None,
                   help="folder of the feature networks (rtdecode models download alexnet ...); metrics "
                        "whose file is missing are reported as not available")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: DECODED/.../evaluation)")
    p.add_argument("--gallery", type=Path, default=None, help="the shown images (default: the decoder's gallery)")
    p.add_argument("--model", type=Path, default=None, help="the model folder (default: the decoder's), for retrieval")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the 30 random draws of 50- and 300-way retrieval (default 0; 42 with --draws mindeye2)")
    p.add_argument("--draws", choices=("rtdecode", "mindeye2"), default="rtdecode",
                   help="mindeye2: draw the subsets with numpy's legacy generator as MindEye2's notebook does")
    p.add_argument("--oracle", action="store_true",
                   help="sanity check: score the shown images as their own reconstructions (every figure perfect)")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    """Score the session; print the summary and where everything was written."""
    from rtdecode.evaluate import EvaluationError, evaluate_session

    try:
        scores, paths = evaluate_session(args.session, args.decoded, args.out, args.weights, args.gallery, args.model,
                                         args.seed, args.draws, args.oracle)
    except (EvaluationError, FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"rtdecode evaluate: {exc}") from None
    print(paths["summary_md"].read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
