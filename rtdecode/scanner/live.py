"""Run the scanner side in the foreground with a one-line-per-volume summary for the operator."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import numpy as np

from rtdecode.base.settings import SessionConfig
from rtdecode.base.threads import apply_role
from rtdecode.scanner import ScannerSide, VolumeEvent


class LiveSummary:
    """Prints each volume's QA and keeps latency figures for the closing summary."""

    def __init__(self, config: SessionConfig, quiet: bool = False) -> None:
        self.config = config
        self.quiet = quiet
        self.latencies: list[float] = []
        self.fd_alarms = 0

    def __call__(self, ev: VolumeEvent) -> None:
        self.latencies.append(ev.latency_ms)
        alarm = ev.fd > self.config.preprocess.fd_threshold_mm
        self.fd_alarms += alarm
        if not self.quiet:
            n = self.config.scanner.volumes_per_run
            print(f"run {ev.run:02d} vol {ev.index + 1:4d}/{n}  FD {ev.fd:5.2f} mm{' !' if alarm else '  '}"
                  f"  trans {ev.motion[0]:+5.2f} {ev.motion[1]:+5.2f} {ev.motion[2]:+5.2f} mm"
                  f"  DVARS {ev.dvars:7.1f}  tSNR {ev.tsnr:6.1f}  latency {ev.latency_ms:6.1f} ms", flush=True)

    def report(self, side: ScannerSide) -> str:
        """The closing summary: volumes, files set aside, FD alarms, latency ("n/a" when no volume was processed)."""
        lat = np.asarray(self.latencies)
        figures = (f"median {np.median(lat):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms" if lat.size
                   else "n/a (no volume processed)")
        lines = [
            "",
            f"processed {side.processed} volumes in {len(side.runs)} run(s); "
            f"{len(side.folder.rejected())} file(s) set aside; {self.fd_alarms} FD alarm(s) "
            f"(> {self.config.preprocess.fd_threshold_mm} mm)",
            f"file closed -> masked vector: {figures} (TR {self.config.scanner.tr_s * 1000:.0f} ms)",
            f"session folder: {side.folder.path}",
        ]
        return "\n".join(lines)


@contextmanager
def _signals_end_the_day(side: ScannerSide):
    """Ctrl-C or SIGTERM: the scanner side stores what is on disk and closes a run whose series has ended
    (:meth:`ScannerSide.shutdown`); a second one stops it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return

    def at_once(signum, frame) -> None:
        raise KeyboardInterrupt

    def end_the_day(signum, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, at_once)
        side.shutdown()  # no printing here: the main thread may be inside a print

    before = {sig: signal.signal(sig, end_the_day) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def run_scanner_side(config: SessionConfig, idle_timeout: float | None = None, quiet: bool = False,
                     until=None) -> ScannerSide:
    """Watch, preprocess and publish until interrupted (or idle); print the summary at the end."""
    apply_role("scanner", config.threads.scanner)  # before the first volume: a core left to the decoder
    summary = LiveSummary(config, quiet=quiet)
    side = ScannerSide(config, on_volume=summary)  # its events socket replays recent events to late consoles
    net = side.net
    where = net.publisher.address if net.publisher is not None else "off"
    control = net.control.address if net.control is not None else "off"
    print(f"session sub-{config.session.subject} ses-{config.session.session} (uid {side.identity['session_uid']}); "
          f"watching {config.scanner.watch_dir} ({config.scanner.mode}); events on {where}, control on {control}"
          f"{' (CURVE)' if net.secure else ''}", flush=True)
    try:
        with _signals_end_the_day(side):
            side.run(until=until, idle_timeout=idle_timeout)
    except KeyboardInterrupt:
        side.stop()
    print(summary.report(side), flush=True)
    return side
