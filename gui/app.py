"""``rtdecode console`` and ``rtdecode display``: Qt entry points (the only place Qt starts)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtdecode.wire.protocol import Message


def load_gallery(folder: Path | None) -> dict[str, np.ndarray]:
    if folder is None:
        return {}
    from PIL import Image

    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(p) as im:
                out[p.stem] = np.asarray(im.convert("RGB"))
    return out


def curve_options(args: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """CURVE client options for the scanner side's sockets and the decoder's (None where not asked for)."""
    from rtdecode.wire.security import client_options

    if args.curve_secret is None:
        if args.curve_scanner_key or args.curve_decoder_key:
            raise ValueError("--curve-scanner-key / --curve-decoder-key need --curve-secret (this host's secret key)")
        return None, None
    if not (args.curve_scanner_key or args.curve_decoder_key):
        raise ValueError("--curve-secret needs --curve-scanner-key and/or --curve-decoder-key (the servers' public keys)")
    events = client_options(args.curve_secret, args.curve_scanner_key) if args.curve_scanner_key else None
    results = client_options(args.curve_secret, args.curve_decoder_key) if args.curve_decoder_key else None
    return events, results


# What PyQt6's xcb platform plugin loads besides its own wheel (a fresh Debian/Ubuntu lacks these).
QT_XCB_LIBRARIES = {"xcb-cursor": "libxcb-cursor0", "xcb-icccm": "libxcb-icccm4", "xcb-keysyms": "libxcb-keysyms1"}


def missing_qt_libraries(platform: str | None = None, find: Callable[[str], str | None] | None = None) -> list[str]:
    """The Debian packages Qt's X11 (xcb) platform needs that this machine lacks; [] elsewhere
    (offscreen, Wayland, macOS, Windows), where Qt brings what it needs."""
    import ctypes.util

    platform = platform if platform is not None else os.environ.get("QT_QPA_PLATFORM", "")
    if not sys.platform.startswith("linux") or platform not in ("", "xcb"):
        return []
    if platform == "" and os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
        return []
    find = find or ctypes.util.find_library
    return [package for lib, package in QT_XCB_LIBRARIES.items() if find(lib) is None]


def install_excepthook() -> None:
    """An exception inside a Qt callback is logged, not fatal: PyQt6 would otherwise abort the process."""
    import logging

    log = logging.getLogger("gui")

    def hook(kind, value, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.error("console: unexpected error (the window stays up)", exc_info=(kind, value, tb))

    sys.excepthook = hook


# Qt messages that say nothing to an operator: the offscreen platform (screenshots, the headless demo) cannot
# pass a window's size hints on, and says so each time a shown window's size limits change
QUIET_QT_MESSAGES = frozenset({"This plugin does not support propagateSizeHints()"})


def install_message_filter() -> None:
    """Qt's messages go to stderr as Qt's own handler writes them (its message pattern), less
    :data:`QUIET_QT_MESSAGES`; every other warning still shows."""
    from PyQt6 import QtCore

    def handler(mode, context, message: str) -> None:
        if message in QUIET_QT_MESSAGES:
            return
        print(QtCore.qFormatLogMessage(mode, context, message), file=sys.stderr, flush=True)

    QtCore.qInstallMessageHandler(handler)


Replay = Callable[[Path | None, Path | None], list[tuple[str, Message]]]
SCREENSHOT_WAIT_S = 15.0  # a live screenshot waits at most this long for the senders' replays


def _live_screenshot(app, window, feed, path: Path) -> int:
    """Drain the senders' replays (at most SCREENSHOT_WAIT_S), draw, save the picture and close."""
    from gui.console import dispose

    try:
        silent = feed.drain(SCREENSHOT_WAIT_S)
        window.refresh()
        app.processEvents()
        window.grab().save(str(path))
        taken = ", ".join(f"{n} from the {source}" for source, n in feed.received.items())
        print(f"screenshot: {path} (messages taken: {taken})")
        if silent:
            print(f"screenshot: nothing heard from {' or '.join(silent)} in {SCREENSHOT_WAIT_S:g} s", file=sys.stderr)
    finally:
        feed.close()
        dispose(window)
    return 0


def main(argv: list[str] | None = None, display: bool = False, replay: Replay | None = None) -> int:
    """``rtdecode console`` / ``rtdecode display``. ``replay`` rebuilds a finished session's messages
    for ``--replay`` / ``--decoded`` (the CLI passes :func:`rtdecode.tools.replay.replayed`)."""
    args = build_parser(display).parse_args(argv)
    try:
        events_curve, results_curve = curve_options(args)
        if (args.replay or args.decoded) and replay is None:
            raise ValueError("--replay / --decoded are read by the rtdecode command (rtdecode console --replay ...)")
    except (FileNotFoundError, ValueError) as exc:
        print(f"rtdecode {'display' if display else 'console'}: error: {exc}", file=sys.stderr)
        return 2
    missing = missing_qt_libraries()
    if missing:
        print(f"rtdecode {'display' if display else 'console'}: error: Qt's X11 platform needs system libraries "
              f"that are not installed: sudo apt install {' '.join(missing)} (or run with QT_QPA_PLATFORM=wayland)",
              file=sys.stderr)
        return 2
    install_excepthook()
    install_message_filter()

    from gui.console import dispose
    from gui.feed import LiveFeed

    app, state, window = _open_window(args, display, replay, events_curve)
    window.showFullScreen() if display and not args.screenshot else window.show()
    live = bool(args.events or args.results)
    if args.screenshot and not live:
        app.processEvents()
        window.grab().save(str(args.screenshot))
        print(f"screenshot: {args.screenshot}")
        dispose(window)
        return 0
    feed = LiveFeed(state, [window], args.events, args.results, events_curve=events_curve,
                    results_curve=results_curve)
    if args.screenshot:  # a live console: what the senders replay is taken (bounded wait) before the picture
        return _live_screenshot(app, window, feed, args.screenshot)
    try:
        return app.exec()
    finally:
        feed.close()
        dispose(window)


def build_parser(display: bool = False) -> argparse.ArgumentParser:
    """The options of ``rtdecode console`` (and of ``rtdecode display``, which shares them)."""
    parser = argparse.ArgumentParser(prog="rtdecode display" if display else "rtdecode console")
    parser.add_argument("--events", default=None, help="scanner side events address, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--results", default=None, help="decoder results address, e.g. tcp://127.0.0.1:5557")
    parser.add_argument("--control", default=None, help="scanner side control address, e.g. tcp://127.0.0.1:5558")
    parser.add_argument("--gallery", type=Path, default=None, help="stimulus images, named by id")
    parser.add_argument("--replay", type=Path, default=None, help="a finished session folder to show")
    parser.add_argument("--decoded", type=Path, default=None, help="the decoder's output folder (with --replay)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the window and exit")
    parser.add_argument("--tab", choices=("trials", "runs", "log", "alignment"), default="trials",
                        help="the console tab shown first (with --screenshot: the one pictured)")
    parser.add_argument("--threads", type=int, default=1,
                        help="numpy and BLAS threads of this process (set by the rtdecode command before Qt loads; "
                             "default 1, 0: every core)")
    parser.add_argument("--fd-threshold", type=float, default=0.5,
                        help="FD alarm threshold (mm) until the scanner side says its own")
    parser.add_argument("--curve-secret", type=Path, default=None,
                        help="this host's secret key (rtdecode keys console), for CURVE links to other hosts")
    parser.add_argument("--curve-scanner-key", type=Path, default=None,
                        help="the scanner side's public key (events and control with CURVE)")
    parser.add_argument("--curve-decoder-key", type=Path, default=None,
                        help="the decoder's public key (results with CURVE)")
    return parser


def _control(address: str | None, curve: dict | None) -> Callable[..., str] | None:
    """The run buttons' and marks' link to the scanner side's control socket (None: not asked for)."""
    if not address:
        return None
    from rtdecode.wire.control import send_command

    def control(action: str, fields: dict | None = None) -> str:
        reply = send_command(address, action, curve=curve, fields=fields)
        return "no answer from the scanner side" if reply is None else str(reply.fields["detail"])

    return control


def _open_window(args: argparse.Namespace, display: bool, replay: Replay | None, events_curve: dict | None):
    """The Qt application, the state and its window, drawn once (with the finished session of
    ``--replay`` / ``--decoded`` when given); returns (app, state, window), not yet shown."""
    from PyQt6 import QtWidgets

    from gui.console import ConsoleWindow, DisplayWindow
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    state = ConsoleState(fd_threshold_mm=args.fd_threshold)
    control = _control(args.control, events_curve)

    from PyQt6 import QtCore

    state.replay = bool(args.replay or args.decoded)
    # Who names the session shown: the scanner side, or for a display (results only) the newest result.
    state.sessions.follow = "scanner" if args.events or args.replay else "decoder"
    gallery = load_gallery(args.gallery)
    state.gallery_size = len(gallery)  # top-1 chance until the decoder says its own gallery
    # The layout is remembered between sessions; a --screenshot run neither reads nor changes it.
    layout = None if args.screenshot else QtCore.QSettings("rtdecode", "display" if display else "console")
    window = DisplayWindow(state) if display else ConsoleWindow(state, gallery, control,
                                                                settings=layout)
    if replay is not None and (args.replay or args.decoded):
        for source, msg in replay(args.replay, args.decoded):
            state.apply(msg, source)
    if not display:
        window.tabs.setCurrentIndex(("trials", "runs", "log", "alignment").index(args.tab))
    window.refresh()
    return app, state, window
