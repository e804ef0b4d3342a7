"""``rtdecode models``: the published weights, what is here, and fetching them."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``models check|download|list``."""
    p = sub.add_parser("models", help="the published weights: what is here, and fetching them (internet)")
    p.add_argument("action", choices=["check", "download", "list"])
    p.add_argument("name", nargs="?", help="file to download (see: rtdecode models list)")
    p.add_argument("--folder", type=Path, default=Path("weights"), help="where weights live (default: ./weights)")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    """List the registry, check a folder against it, or download one file."""
    from models import registry

    if args.action == "list":
        for f in registry.REGISTRY.values():
            source = f.url or f"{f.repo_id}/{f.path}"
            print(f"{f.name:34s} {f.size_gb:6.2f} GB  {source}  - {f.description}"
                  + (f" (licence: {f.licence})" if f.licence else ""))
        return 0
    if args.action == "check":
        missing = 0
        for f, path, present in registry.check(args.folder):
            missing += not present
            print(f"{'ok     ' if present else 'missing'}  {f.name:34s} {path}")
        if missing:
            print(f"{missing} file(s) missing; fetch one with: rtdecode models download NAME --folder {args.folder}")
        return 0
    if not args.name:
        raise SystemExit("rtdecode models download: name the file (rtdecode models list shows them)")
    try:
        registry.entry(args.name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    print(registry.download(args.name, args.folder))
    return 0
