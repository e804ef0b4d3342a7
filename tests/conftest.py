"""Shared fixtures: seeded simulated runs with small, unequal shapes, and a scanner side in a thread."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from rtdecode.base.config import config_from_dict
from rtdecode.base.settings import SessionConfig
from rtdecode.scanner import ScannerSide, VolumeEvent
from rtdecode.simulator.scanner import SimulatedRun, simulate_run

if TYPE_CHECKING:
    from pytestqt.qtbot import QtBot

    from gui.console import ConsoleWindow

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # Qt tests never need a screen
# Derived arrays (template, latent basis) cached inside the checkout, not in the user's home.
os.environ.setdefault("RTDECODE_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "rtdecode"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SKYRA_RUN = SHARED / "data" / "siemens-skyra-mosaic-run"
SMALL_SHAPE = (26, 30, 20)  # unequal sides so axis mix-ups fail
SCREEN_W, SCREEN_H = 1366, 768 - 40  # an operator's laptop screen, less a taskbar


@pytest.fixture(scope="session")
def small_run() -> SimulatedRun:
    return simulate_run(12, shape=SMALL_SHAPE, voxel_mm=6.0, max_mm=1.0, max_deg=1.0, seed=3)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; the usual default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's source-port range, for a server a client reaches before it binds.

    A client retrying a loopback port that nobody holds can be given that very port as its own source
    port and connect to itself; ZeroMQ takes the failed handshake as a protocol error and never retries,
    so the client stays deaf for good (CI saw a console take no events all day). ``bind_to_random_port``
    picks from 49152-65535, inside that range; ports below it are never handed out as source ports.
    """
    low = ephemeral_range()[0]
    pick = random.Random()  # not seeded: parallel runs must not race for one port
    for _ in range(200):
        port = pick.randrange(20000, max(low, 20001))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 20000 and {low}")


def config_template(cli: list[str], tmp_path: Path, changes: dict[str, dict[str, object]]) -> Path:
    """``<cli> config template``'s output with the given keys changed (each must be in the template)."""
    path = tmp_path / "session.toml"
    subprocess.run([*cli, "config", "template", str(path)], check=True, timeout=120)
    pending = {s: dict(keys) for s, keys in changes.items()}
    section, out = "", []
    for line in path.read_text().splitlines():
        section = m[1] if (m := re.match(r"^\[(\w+)\]$", line)) else section
        key = line.split(" = ")[0]
        if key in pending.get(section, {}):
            line = f"{key} = {json.dumps(pending[section].pop(key))}"
        out.append(line)
    assert not any(pending.values()), f"not in the template: {pending}"
    path.write_text("\n".join(out) + "\n")
    return path


def make_config(tmp_path: Path, **sections) -> SessionConfig:
    raw = {
        "session": {"root": str(tmp_path / "sessions"), "subject": "01", "session": "01"},
        "scanner": {"watch_dir": str(tmp_path / "watch"), "volumes_per_run": 12, "poll_interval_s": 0.05,
                    "partial_timeout_s": 1.0, "missing_timeout_s": 2.0, "quarantine_dir": str(tmp_path / "rejected")},
        "network": {"events_port": 0, "control_port": 0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    (tmp_path / "watch").mkdir(exist_ok=True)
    return config_from_dict(raw)


class SideThread:
    """A ScannerSide running in a background thread until ``n`` volumes are processed or time runs out."""

    def __init__(self, config: SessionConfig, n: int, timeout: float = 60.0, publisher=None) -> None:
        self.events: list[VolumeEvent] = []
        self.side = ScannerSide(config, publisher=publisher, on_volume=self.events.append)
        self.n = n
        self.deadline = time.monotonic() + timeout
        self.error: BaseException | None = None  # anything that escaped the scanner side's loop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.side.run(until=lambda s: s.processed >= self.n or time.monotonic() > self.deadline)
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self) -> SideThread:
        self.thread.start()
        time.sleep(0.2)  # let the watcher's observer start before files land
        return self

    def wait(self, settle: float = 0.0) -> None:
        self.thread.join(timeout=max(1.0, self.deadline - time.monotonic() + 5))
        assert not self.thread.is_alive(), "scanner side did not stop in time"
        time.sleep(settle)

    def __exit__(self, *exc) -> None:
        self.side.stop()
        self.thread.join(timeout=10)

    @property
    def indices(self) -> list[tuple[int, int]]:
        return [(e.run, e.index) for e in self.events]



def wait_until(cond, seconds: float) -> bool:
    """Poll ``cond`` every 50 ms for up to ``seconds``; its last value (every wait in the tests is bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()

def drain(sub, seconds: float, n_volumes: int | None = None) -> list:
    """Messages a subscriber receives within ``seconds`` (sooner once ``n_volumes`` volume events came)."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if n_volumes is not None and sum(m.type == "volume" for m in got) >= n_volumes:
            break
        msg = sub.recv(timeout_ms=100)
        if msg is not None:
            got.append(msg)
    return got


@pytest.fixture(scope="session")
def latent_space():
    from rtdecode.simulator.subjects import LatentSpace

    return LatentSpace(dim=32)


@pytest.fixture(scope="session")
def small_visit(latent_space):
    """A simulated subject's visit on a small 4 mm grid with unequal sides; runs of 192 volumes."""
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    spec = SubjectSpec(name="t01", n_voxels=3000, seed=5, latent_dim=32)
    return Visit(spec, n_runs=3, shape=(40, 46, 36), voxel_mm=4.0, max_mm=0.8, max_deg=0.8, seed=9,
                 latent=latent_space)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def windows(qtbot):
    """``windows(w)`` holds a Qt window for the test and frees it after, outside any event.

    Used instead of ``qtbot.addWidget``, which holds only a weak reference: a console window that
    nobody holds is freed by the garbage collector at a random moment, once inside its own paint event
    during pytest-qt's teardown (a segmentation fault in CI)."""
    from gui.console import dispose

    held = []

    def keep(window):
        held.append(window)
        return window

    yield keep
    dispose(*held)


def full_session_window(windows: Callable[[ConsoleWindow], ConsoleWindow], qtbot: QtBot,
                        replay: bool = False) -> ConsoleWindow:
    """A console window on ``gui.bench``'s seeded full session, shown at 1366 x 728 and exposed."""
    from gui.bench import full_session
    from gui.console import ConsoleWindow
    from gui.state import ConsoleState

    msgs, gallery = full_session(volumes=400, trials=60, log_lines=300, seed=0)
    state = ConsoleState(replay=replay)
    for source, msg in msgs:
        state.apply(msg, source)
    window = windows(ConsoleWindow(state, gallery))
    window.resize(SCREEN_W, SCREEN_H)
    window.refresh()
    window.show()
    qtbot.waitExposed(window, timeout=5000)
    return window


def record_session(root, runs):
    """A session folder as the scanner side leaves it: each run's masked vectors, confounds and events
    (runs: (simulated run with .events, (volumes, voxels) series) pairs)."""
    from rtdecode.base.events import write_events
    from rtdecode.base.session import SessionFolder

    folder = SessionFolder(root, "01", "01").create()
    for number, (run, series) in enumerate(runs, start=1):
        folder.add_run(number, 10 + number, f"1.2.3.{number}")
        store = folder.run_store(number)
        n = series.shape[1]
        store.save_reference(np.zeros((2, 2, 2)), np.eye(4), np.ones((n, 1, 1), bool), np.eye(4))
        for t, vector in enumerate(series):
            store.append(vector, {"volume": t, "trans_x": 0, "trans_y": 0, "trans_z": 0, "rot_x": 0, "rot_y": 0,
                                  "rot_z": 0})
        write_events(folder.path / "func" / f"{folder.prefix(number)}_events.tsv", run.events)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one torch thread, or the OpenMP pool spins against the others."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
