"""CURVE encryption with allow-listed keys, for every socket that leaves the host.

``rtdecode keys NAME --folder keys`` writes ``NAME.key`` (public, share it) and ``NAME.key_secret``
(keep it on that host). A serving socket (the scanner side's events and control, the decoder's
betas and results) uses its host's secret key and accepts only clients whose public keys lie in an
``allowed`` folder; a client uses its own key pair and the server's public key. A refused peer is
logged by the authenticator (ZeroMQ's ZAP handler) and receives nothing.

Each serving process gets a :class:`CurveServer`: its own ZeroMQ context with its own authenticator,
so two servers in one process (tests, a one-host rehearsal) never share or replace each other's
allow-lists.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from rtdecode.base.errors import ConfigError
from rtdecode.wire.sockets import is_local

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
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a CURVE key file written by rtdecode keys ({exc})") from None
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


def client_or_none(secret_file: Path | None, server_public_file: Path | None) -> dict[int, object] | None:
    """Client options when both key files are given, None when neither is; an error naming the gap otherwise."""
    if secret_file is None and server_public_file is None:
        return None
    if secret_file is None or server_public_file is None:
        raise ValueError("CURVE needs both this host's secret key and the server's public key")
    return client_options(secret_file, server_public_file)


class _AllowList:
    """ZAP credentials provider: a client key is accepted if its public key file is in the folder."""

    def __init__(self, folder: Path) -> None:
        self.keys = {zmq.auth.load_certificate(str(p))[0] for p in sorted(folder.glob("*.key"))}
        self.refused = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        z85 = zmq.utils.z85.encode(client_key) if len(client_key) == 32 else client_key
        if z85 in self.keys:
            return True
        self.refused += 1
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


class CurveServer:
    """A context for one process's serving sockets: with keys, CURVE and an allow-list; without, plain.

    ``options`` go to every serving socket made in ``context``. Call :meth:`close` after those sockets.
    """

    def __init__(self, secret: Path | None = None, allowed: Path | None = None) -> None:
        if (secret is None) != (allowed is None):
            raise ValueError("CURVE on a serving socket needs both a secret key and a folder of allowed public keys")
        self.context = zmq.Context()
        self.auth: ThreadAuthenticator | None = None
        self.options: dict[int, object] | None = None
        if secret is not None:
            self.options = server_options(secret)
            self.auth = start_authenticator(allowed, self.context)

    @property
    def secure(self) -> bool:
        return self.options is not None

    @property
    def refused(self) -> int:
        """Peers the allow-list refused so far."""
        provider = getattr(self.auth, "credentials_providers", {}).get("*") if self.auth else None
        return getattr(provider, "refused", 0)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if not self.context.closed:
            self.context.destroy(linger=0)


def require_curve_off_host(addresses: dict[str, str], secure: bool, allow_plaintext: bool) -> None:
    """Refuse, with one line, to bind or reach a non-loopback address in plain TCP unless allowed explicitly."""
    if secure or allow_plaintext:
        return
    open_ = {name: a for name, a in addresses.items() if a and not is_local(a)}
    if open_:
        listed = ", ".join(f"{name} {a}" for name, a in open_.items())
        raise ConfigError(f"{listed}: reachable from other hosts without CURVE; give keys (rtdecode keys, "
                          "docs/real-scanner.md) or set allow_plaintext = true / --allow-plaintext on purpose")
