"""CURVE encryption with allow-listed keys, for a scanner side and a decoder on different hosts.

``rtdecode keys NAME --folder keys`` writes ``NAME.key`` (public, share it) and ``NAME.key_secret``
(keep it on that host). A serving socket (the decoder's betas and results, the scanner side's events)
uses its own secret key and accepts only clients whose public keys lie in the ``allowed`` folder; a
client uses its own key pair and the server's public key. A refused peer is logged by the
authenticator (ZeroMQ's ZAP handler) and receives nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


def create_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CURVE key file not found (create one with: rtdecode keys NAME --folder DIR)")
    public, secret = zmq.auth.load_certificate(str(path))
    if want_secret and not secret:
        raise ValueError(f"{path}: expected a secret key file (NAME.key_secret), found only a public key")
    return public, secret


def server_options(secret_file: str | Path) -> dict[int, object]:
    public, secret = _load(Path(secret_file), True)
    return {zmq.CURVE_SERVER: 1, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def client_options(secret_file: str | Path, server_public_file: str | Path) -> dict[int, object]:
    public, secret = _load(Path(secret_file), True)
    server, _ = _load(Path(server_public_file), False)
    return {zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret, zmq.CURVE_SERVERKEY: server}


class _AllowList:
    """ZAP credentials provider: a client key is accepted if its public key file is in the folder."""

    def __init__(self, folder: Path) -> None:
        self.keys = {zmq.auth.load_certificate(str(p))[0] for p in sorted(folder.glob("*.key"))}

    def callback(self, domain: str, client_key: bytes) -> bool:
        z85 = zmq.utils.z85.encode(client_key) if len(client_key) == 32 else client_key
        if z85 in self.keys:
            return True
        log.warning("refused a CURVE peer with unknown public key %s", z85.decode(errors="replace"))
        return False


def start_authenticator(allowed: str | Path, context: zmq.Context | None = None) -> ThreadAuthenticator:
    """Accept CURVE clients whose public keys are in ``allowed``; others are refused and logged."""
    allowed = Path(allowed)
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise FileNotFoundError(f"{allowed}: no allowed public keys (*.key) to accept clients with")
    auth = ThreadAuthenticator(context or zmq.Context.instance())
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(allowed))
    return auth
