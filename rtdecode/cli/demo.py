"""``rtdecode demo``: one simulated visit, end to end (rtdecode.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``demo [--out] [--short] ...``."""
    p = sub.add_parser("demo", help="a simulated single visit: pretrained model, calibration hour, calibration, "
                                    "a real-time run decoded in another process; summary and report")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="where the visit goes (replaced)")
    p.add_argument("--short", action="store_true", help="a visit of a few minutes (3 short calibration runs)")
    p.add_argument("--calibration-runs", type=int, default=None, help="default 11 (one hour)")
    p.add_argument("--calibrate-epochs", type=int, default=None)
    p.add_argument("--console", dest="console", action="store_true", default=None,
                   help="open the console during the real-time run (default: when a display is present)")
    p.add_argument("--headless", dest="console", action="store_false", help="screenshots instead of the console")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    """Run the visit with the settings asked for."""
    from rtdecode.demo import DemoSettings, run_demo

    settings = DemoSettings.short() if args.short else DemoSettings()
    changes = {"calibration_runs": args.calibration_runs, "calibrate_epochs": args.calibrate_epochs}
    settings = settings.with_(**{k: v for k, v in changes.items() if v is not None})
    run_demo(args.out, settings, console=args.console)
    return 0
