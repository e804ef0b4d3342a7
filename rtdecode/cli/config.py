"""``rtdecode config``: write a configuration template, or check a configuration file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``config template|check [PATH]``."""
    p = sub.add_parser("config", help="write a configuration template, or check a configuration file")
    p.add_argument("action", choices=["template", "check"])
    p.add_argument("path", nargs="?", type=Path, help="file to check (check) or write (template; default: stdout)")
    p.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    """Print or write the template; or check a file, with warnings for what a run would meet."""
    from rtdecode.base.config import config_to_toml, load_config
    from rtdecode.base.settings import SessionConfig

    if args.action == "template":
        text = config_to_toml(SessionConfig())
        if args.path:
            args.path.write_text(text)
        else:
            print(text)
        return 0
    if args.path is None:
        raise SystemExit("rtdecode config check: give the configuration file to check")
    cfg = load_config(args.path)
    from rtdecode.base.storage import SpaceWatch

    space = SpaceWatch(cfg.session_dir, cfg.session.min_free_gb, 0, cfg.scanner.volumes_per_run).at_start()
    if space is not None:
        print(f"warning: {space}")
    from rtdecode.glm.runner import events_warnings

    for line in events_warnings(cfg):  # a run without its events table gives no betas
        print(f"warning: {line}")
    if not cfg.scanner.watch_dir.is_dir():  # `rtdecode run` refuses to start without it
        print(f"warning: scanner.watch_dir: folder does not exist: {cfg.scanner.watch_dir} (create it, or "
              "point it at the folder the scanner exports to)")
    print(f"{args.path}: ok")
    return 0
