"""``rtdecode run``: the scanner side of a session, from its configuration file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``run``: watch the scanner folder and preprocess every volume."""
    p = sub.add_parser("run", help="watch the scanner folder and preprocess every volume of a session")
    p.add_argument("--config", required=True, type=Path, help="session configuration (TOML)")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new file")
    p.add_argument("--quiet", action="store_true", help="no per-volume summary line")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Run the scanner side until it is stopped (or idle for --idle-timeout)."""
    from rtdecode.base.config import load_config
    from rtdecode.scanner.live import run_scanner_side

    run_scanner_side(load_config(args.config), idle_timeout=args.idle_timeout, quiet=args.quiet)
    return 0
