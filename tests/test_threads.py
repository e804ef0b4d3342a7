"""Bounded thread pools per process (issue 27, defect 7): each role started as a real process reads back
its own torch, OpenMP and BLAS pools (threadpoolctl, torch) and logs them in one line, read here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from rtdecode.base.errors import ConfigError
from rtdecode.base.threads import ENV_VARS, ThreadsSection, cores
from rtdecode.demo.decoder_process import start_decoder, stop_decoder
from rtdecode.gallery.builtin import StimulusSet

RTDECODE = str(Path(sys.executable).with_name("rtdecode"))
LINE = re.compile(r"threads \((\w+)\): (.*) of (\d+) cores")

pytestmark = pytest.mark.skipif(cores() < 2, reason="a limit of 1 thread is only seen where the default is more")


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without inherited thread settings: what a process gets is its own doing."""
    return {**{k: v for k, v in os.environ.items() if k not in ENV_VARS}, "PYTHONUNBUFFERED": "1", **extra}


def _pools(text: str, role: str) -> dict[str, int]:
    found = [m for m in LINE.finditer(text) if m.group(1) == role]
    assert found, f"no 'threads ({role}): ...' line in:\n{text[-3000:]}"
    pairs = (item.rsplit(" ", 1) for item in found[-1].group(2).split(", "))
    return {name: int(n) for name, n in pairs}


def _model(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [40], hidden=16)), tmp_path / "model", "sim01")
    StimulusSet().save(tmp_path / "gallery", range(4))
    return model, tmp_path / "gallery"


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not path.exists() and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


def test_the_scanner_side_runs_on_the_templates_one_thread(tmp_path):
    path = tmp_path / "session.toml"
    subprocess.run([RTDECODE, "config", "template", str(path)], check=True, timeout=60, capture_output=True)
    text = path.read_text().replace("events_port = 5555", "events_port = 0").replace("control_port = 5558",
                                                                                        "control_port = -1")
    assert "[threads]\nscanner = 1\n" in text
    path.write_text(text)
    (tmp_path / "incoming").mkdir()
    done = subprocess.run([RTDECODE, "run", "--config", str(path), "--idle-timeout", "0.5", "--quiet"],
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pools = _pools(done.stderr, "scanner")
    assert pools["openblas"] == 1, pools


def test_the_decoder_runs_on_one_thread_by_default(tmp_path):
    model, gallery = _model(tmp_path)
    out = tmp_path / "decoded"
    with open(tmp_path / "decoder.log", "w") as log:
        proc = subprocess.Popen([RTDECODE, "decode", "--model", str(model), "--gallery", str(gallery), "--out", str(out),
                                 "--betas", "tcp://127.0.0.1:0", "--results", "tcp://127.0.0.1:0"],
                                env=_clean_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(out / "decoder.json", proc)  # bound and serving: the model is loaded
        finally:
            stop_decoder(proc)
    pools = _pools((tmp_path / "decoder.log").read_text(), "decoder")
    assert pools["torch"] == pools["torch_interop"] == pools["openmp"] == pools["openblas"] == 1, pools


def test_the_demos_decoder_gets_the_threads_it_is_given(tmp_path, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    model, gallery = _model(tmp_path)
    # 3: neither the decoder's default (1) nor this machine's (its cores, 2 here): only what was passed
    proc, _ = start_decoder(model, gallery, tmp_path / "decoded", threads=3)
    stop_decoder(proc)
    pools = _pools((tmp_path / "decoded" / "decoder.log").read_text(), "decoder")
    assert pools["torch"] == pools["openmp"] == pools["openblas"] == 3, pools


def test_a_process_that_loaded_torch_first_is_limited_too():
    """The demo's process: torch loaded (and used) by calibration, then the real-time run on one thread."""
    code = ("import torch, json\n"
            "torch.ones(64, 64) @ torch.ones(64, 64)\n"
            "from rtdecode.base.threads import limit_threads\n"
            "print(json.dumps(limit_threads(1)))\n")
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pools = json.loads(done.stdout)
    assert pools["torch"] == pools["openmp"] == pools["openblas"] == 1, pools


def test_the_console_runs_on_one_thread(tmp_path):
    done = subprocess.run([RTDECODE, "console", "--screenshot", str(tmp_path / "console.png")],
                          env=_clean_env(QT_QPA_PLATFORM="offscreen"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _pools(done.stderr, "console")["openblas"] == 1


def test_calibration_takes_every_core_even_when_its_parent_said_one(tmp_path):
    """0 (the default) is every core, whatever the environment a parent left (as the demo's does)."""
    done = subprocess.run([RTDECODE, "pretrain", "--dataset", str(tmp_path / "absent"), "--subjects", "a",
                           "--out", str(tmp_path / "model")],
                          env=_clean_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=120)
    pools = _pools(done.stderr, "calibration")
    assert pools["torch"] == pools["openblas"] == cores(), pools
    done = subprocess.run([RTDECODE, "calibrate", "--dataset", str(tmp_path / "absent"), "--subject", "a",
                           "--out", str(tmp_path / "model"), "--threads", "1"],
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert _pools(done.stderr, "calibration")["torch"] == 1


def test_a_thread_count_out_of_range_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"threads.decoder must be 0 \(every core\) to 1024, got -1"):
        ThreadsSection(decoder=-1).check("session.toml")
    done = subprocess.run([RTDECODE, "decode", "--model", "m", "--gallery", "g", "--out", "o", "--threads", "two"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "argument --threads: must be 0 (every core) to 1024 threads, got 'two'" in done.stderr
