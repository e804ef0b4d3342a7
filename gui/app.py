"""``rtdecode console`` and ``rtdecode display``: Qt entry points (the only place Qt starts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


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


def main(argv: list[str] | None = None, display: bool = False) -> int:
    parser = argparse.ArgumentParser(prog="rtdecode display" if display else "rtdecode console")
    parser.add_argument("--events", default=None, help="scanner side events address, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--results", default=None, help="decoder results address, e.g. tcp://127.0.0.1:5557")
    parser.add_argument("--control", default=None, help="scanner side control address, e.g. tcp://127.0.0.1:5558")
    parser.add_argument("--gallery", type=Path, default=None, help="stimulus images, named by id")
    parser.add_argument("--replay", type=Path, default=None, help="a finished session folder to show")
    parser.add_argument("--decoded", type=Path, default=None, help="the decoder's output folder (with --replay)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the window and exit")
    parser.add_argument("--fd-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)

    from PyQt6 import QtWidgets

    from gui.console import ConsoleWindow, DisplayWindow
    from gui.feed import LiveFeed
    from gui.replay import decoder_messages, session_messages
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    state = ConsoleState(fd_threshold_mm=args.fd_threshold)
    control = None
    if args.control:
        from rtdecode.control import send_command

        def control(action: str) -> str:
            reply = send_command(args.control, action)
            return "no answer from the scanner side" if reply is None else str(reply.fields["detail"])

    window = DisplayWindow(state) if display else ConsoleWindow(state, load_gallery(args.gallery), control)
    if args.replay or args.decoded:
        for msg in session_messages(args.replay) if args.replay else []:
            state.apply(msg, "scanner")
        for msg in decoder_messages(args.decoded) if args.decoded else []:
            state.apply(msg, "decoder")
    window.refresh()
    window.showFullScreen() if display and not args.screenshot else window.show()
    if args.screenshot:
        app.processEvents()
        window.grab().save(str(args.screenshot))
        print(f"screenshot: {args.screenshot}")
        return 0
    feed = LiveFeed(state, [window], args.events, args.results)
    try:
        return app.exec()
    finally:
        feed.close()
