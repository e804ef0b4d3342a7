"""The ``rtdecode`` command: one module per command group, each owning its subparser and its
handler (``set_defaults(func=...)``); here the top parser is built from them and the handler run."""

from __future__ import annotations

import argparse
import logging
import sys

from rtdecode.base.errors import RtdecodeError
from rtdecode.cli import (
    bench,
    calibrate,
    config,
    decode,
    demo,
    evaluate,
    glm,
    keys,
    models,
    run,
    session,
    simulate,
)
from rtdecode.cli.console import GUI_COMMANDS, add_parsers, run_window

__all__ = ["build_parser", "main"]

# In the order `rtdecode --help` lists them.
PARSERS = (run.add_parser, config.add_parser, simulate.add_parser, glm.add_glm_parser, calibrate.add_calibrate_parser,
           glm.add_tune_parser, calibrate.add_pretrain_parser, decode.add_parser, session.add_parser,
           evaluate.add_parser, keys.add_parser, add_parsers, models.add_parser, bench.add_parser, demo.add_parser)


def build_parser() -> argparse.ArgumentParser:
    """The top parser: ``-v``, then each command group's subcommands (:data:`PARSERS`)."""
    parser = argparse.ArgumentParser(prog="rtdecode", description="Real-time fMRI-to-image decoding at the scanner.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``rtdecode [-v] COMMAND ...``: 0 on success, 2 on a usage or configuration error, 130 on Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    window = argv[1:] if argv[:1] in (["-v"], ["--verbose"]) else argv
    if window and window[0] in GUI_COMMANDS:  # the windows parse their own options, --help included
        if window is not argv:  # -v: debug logging (the window's own basicConfig then leaves it be)
            logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                                datefmt="%H:%M:%S")
        return run_window(window)
    if argv[:2] == ["bench", "betas"]:  # its own parser, with every option of the betas bench
        return bench.run_betas(argv[2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # matplotlib's INFO notes (e.g. categorical units) are not the operator's; warnings stay
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return args.func(args)  # set by the command's module (set_defaults)
    except RtdecodeError as exc:
        print(f"rtdecode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
