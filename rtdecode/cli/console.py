"""``rtdecode console``, ``display`` and ``screenshots``: the Qt windows, each parsing its own options
(gui.app, rtdecode.tools.screenshots); here only their names, their help line and their threads."""

from __future__ import annotations

import argparse
import logging

from rtdecode.base.threads import DEFAULTS
from rtdecode.cli.common import _threads

GUI_COMMANDS = ("console", "display", "screenshots")  # parsed by gui.app / gui.screenshots themselves


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The three windows' entries, for ``rtdecode --help`` (their options are their own)."""
    for name, text in (("console", "the operator console (Qt): run status, QA plots, decoded trials"),
                       ("display", "the live display (Qt): full-screen reconstructions for a second screen"),
                       ("screenshots", "regenerate docs/screenshots: a simulated run through the real path")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_not_parsed_here)


def run_window(argv: list[str]) -> int:
    """``argv`` starts with one of :data:`GUI_COMMANDS`: its threads set, then the window's own main."""
    if argv[0] == "screenshots":
        from rtdecode.tools.screenshots import main as screenshots_main

        return screenshots_main(argv[1:])
    _gui_threads(argv[0], argv[1:])
    from gui.app import main as gui_main
    from rtdecode.tools.replay import replayed

    return gui_main(argv[1:], display=argv[0] == "display", replay=replayed)


def _not_parsed_here(args: argparse.Namespace) -> int:
    """A window command after a top-level option (``rtdecode -v console``): never handed on, as before."""
    raise AssertionError(args.command)  # pragma: no cover


def _gui_threads(command: str, argv: list[str]) -> None:
    """The console's or display's threads (``--threads``, read again by gui.app for its help), set before Qt
    and numpy load."""
    from rtdecode.base.threads import apply_role

    parser = argparse.ArgumentParser(prog=f"rtdecode {command}", add_help=False)
    parser.add_argument("--threads", type=_threads, default=DEFAULTS.console)
    known, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    apply_role(command, known.threads)
