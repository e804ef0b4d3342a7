"""``rtdecode keys``: a CURVE key pair for encrypted links between hosts."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``keys NAME [--folder]``."""
    p = sub.add_parser("keys", help="create a CURVE key pair for encrypted links between hosts")
    p.add_argument("name", help="whose keys: e.g. scanner, decoder, console")
    p.add_argument("--folder", type=Path, default=Path("keys"))
    p.set_defaults(func=_keys)


def _keys(args: argparse.Namespace) -> int:
    """Create the pair and say where each half goes."""
    from rtdecode.wire.security import create_keys

    public, secret = create_keys(args.folder, args.name)
    print(f"public key (copy to the other host's allowed/ folder): {public}\nsecret key (stays here): {secret}")
    return 0
