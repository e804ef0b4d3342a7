"""``rtdecode bench contention``: the real-time path on one shared machine, under a competing load.

The demo's real-time run, at TR pace, with something else busy on the same cores (issue 27):

- the scanner side, in this process at ``[threads] scanner``: a simulated run written file by file
  into its watch folder at the TR, picked up by the real watcher, preprocessed, stored, and fitted by
  the GLM with per-voxel HRFs and noise components (a synthetic tuning: the cost does not depend on
  which voxel chose which member), AR(1), as the demo's GLM and more;
- the decoder, ``rtdecode decode`` in its own process at ``[threads] decoder``, over the acknowledged
  betas channel, its results received over ZeroMQ here;
- a competing load: processes multiplying matrices with numpy at their library's defaults (every core),
  as another job on the machine would.

Each stage's median and p99 against the TR. ``threads=0`` gives each process every core (what each
library does by default, as before issue 27), to compare.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.base.threads import ENV_VARS, ThreadsSection, apply_role, cores

# Another user's job: numpy at its defaults (every core), never idle.
LOAD = "import numpy as np\na = np.random.default_rng(0).random((768, 768))\nwhile True:\n    a = np.tanh(a @ a)\n"
PATTERN = "001_{run:06d}_{volume:06d}.dcm"
TRIAL_EVERY_S = 4.5


def _setup(work: Path, volumes: int, shape: tuple[int, int, int], n_voxels: int, hidden: int, tr_s: float,
           seed: int) -> tuple[list[bytes], Path, Path, Path, Path]:
    """Untimed: the run's files as bytes, the ROI, the events table, the gallery and a model folder with
    a GLM tuning (random weights: they time as trained ones do)."""
    import torch

    from models.folder import write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2
    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.glm.denoise import NoiseSubtraction
    from rtdecode.glm.hrf_library import library_params
    from rtdecode.glm.tuning import GLMTuning
    from rtdecode.scanner.bench import roi_mask
    from rtdecode.simulator.scanner import WRITERS, simulate_run

    rng = np.random.default_rng(seed)
    pool = simulate_run(16, shape=shape, voxel_mm=3.0, max_mm=1.0, max_deg=1.0, seed=seed)
    files = []
    for t in range(volumes):
        staged = work / "staged.dcm"
        data = pool.volumes[t % len(pool.volumes)] + rng.normal(0, 5, shape).astype(np.float32)
        WRITERS["mosaic"](staged, data, pool.affine, series_number=1, instance=t + 1, tr_s=tr_s)
        files.append(staged.read_bytes())
    mask = roi_mask(pool.volumes[0], n_voxels)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), pool.affine), work / "roi.nii")
    onsets = np.arange(0.0, (volumes - 10) * tr_s, TRIAL_EVERY_S)
    StimulusSet().save(work / "gallery", range(len(onsets)))
    rows = "".join(f"{o:.1f}\t3.0\tsim-{i:05d}\n" for i, o in enumerate(onsets))
    (work / "events.tsv").write_text("onset\tduration\timage\n" + rows)
    torch.manual_seed(seed)
    model = write_model_folder(MindEye2(standin_config(["bench"], [n_voxels], hidden=hidden)), work / "model", "bench")
    members = rng.choice(len(library_params()), 12, replace=False)
    pool_voxels = np.sort(rng.choice(n_voxels, min(2000, n_voxels), replace=False))
    # Three components subtracted from every volume (glm.denoise_mode "subtract", the default): random
    # patterns and loadings cost what learned ones do.
    noise = NoiseSubtraction(pool_voxels, np.zeros(len(pool_voxels)), np.ones(len(pool_voxels)),
                             rng.normal(0, 1, (len(pool_voxels), 3)), rng.normal(0, 0.01, (3, n_voxels)))
    GLMTuning(rng.choice(members, n_voxels), library_params(), pool_voxels, np.zeros(n_voxels), 3, np.zeros(1),
              source="rtdecode bench contention (synthetic)", subtraction=noise, fast_components=3,
              end_components=3).save(model)
    return files, work / "roi.nii", work / "events.tsv", work / "gallery", model


def _write_at_pace(files: list[bytes], watch: Path, tr_s: float, written: dict[int, float],
                   stop: threading.Event) -> None:
    """The scanner: volume t's file closed at (t + 1) TR, written under another name and renamed."""
    start = time.monotonic()
    for t, data in enumerate(files):
        if stop.wait(max(0.0, start + (t + 1) * tr_s - time.monotonic())):
            return
        name = PATTERN.format(run=1, volume=t)
        (watch / f".{name}.part").write_bytes(data)
        os.replace(watch / f".{name}.part", watch / name)
        written[t] = (watch / name).stat().st_mtime  # the clock the scanner side's latency starts from


@dataclass
class Gathered:
    """What one contention run saw, all on this process's clock (time.time())."""

    settings: dict
    threads: ThreadsSection
    written: dict[int, float] = field(default_factory=dict)  # volume -> its file's close (mtime)
    seen: list[tuple[int, float, float]] = field(default_factory=list)  # (volume, preprocess ms, when handed on)
    sent: dict[int, tuple[float, int, float]] = field(default_factory=dict)  # trial -> (sent, frames, estimate ms)
    glm_ms: dict[int, float] = field(default_factory=dict)  # volume -> the rest of its step: GLM, betas out
    done_ms: dict[int, float] = field(default_factory=dict)  # volume -> file closed to the scanner side done
    retrievals: dict = field(default_factory=dict)  # (run, trial, version) -> (received, fields)
    reconstructions: dict = field(default_factory=dict)
    read_back: dict[str, object] = field(default_factory=dict)

    def on_beta(self, b) -> None:
        if b.version == "realtime":
            self.sent[b.trial] = (time.time(), b.n_frames, b.estimate_ms)

    def on_volume(self, ev) -> None:
        self.seen.append((ev.index, ev.latency_ms, time.time()))


def _stats(name: str, values, tr_ms: float) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    median, p99 = (float(np.median(v)), float(np.percentile(v, 99))) if len(v) else (float("nan"), float("nan"))
    return {"stage": name, "median_ms": median, "p99_ms": p99, "n": int(len(v)), "within_tr": bool(p99 <= tr_ms)}


def _decoder_threads(log: Path) -> str:
    found = re.findall(r"threads \(decoder\): (.*)", log.read_text(errors="replace")) if log.exists() else []
    return found[-1] if found else "not logged"


def bench_contention(volumes: int = 120, tr_s: float = 1.5, n_voxels: int = 3646, shape=(64, 64, 36),
                     threads: int | None = None, load: int = 1, hidden: int = 128, seed: int = 0) -> dict:
    """Run the scanner side, the decoder and ``load`` busy processes together; each stage's median and p99."""
    from rtdecode.base.config import config_from_dict
    from rtdecode.demo.decoder_process import ResultListener, start_decoder, stop_decoder
    from rtdecode.scanner import ScannerSide

    g = Gathered({"volumes": volumes, "tr_s": tr_s, "n_voxels": n_voxels, "shape": list(shape), "load": load,
                  "hidden": hidden},
                 ThreadsSection() if threads is None else ThreadsSection(scanner=threads, decoder=threads))
    with tempfile.TemporaryDirectory(prefix="rtdecode-contention-") as tmp:
        work = Path(tmp)
        files, roi, events, gallery, model = _setup(work, volumes, tuple(shape), n_voxels, hidden, tr_s, seed)
        g.read_back["scanner"] = apply_role("scanner", g.threads.scanner)
        proc, addresses = start_decoder(model, gallery, work / "decoded", threads=g.threads.decoder)
        busy_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        busy = [subprocess.Popen([sys.executable, "-c", LOAD], env=busy_env) for _ in range(load)]
        listener = ResultListener(addresses["results"])
        (work / "watch").mkdir()
        cfg = config_from_dict({
            "session": {"root": str(work / "sessions"), "subject": "bench", "bids": False},
            "scanner": {"watch_dir": str(work / "watch"), "tr_s": tr_s, "volumes_per_run": volumes,
                        "pattern": PATTERN},
            "preprocess": {"mask": str(roi)},
            "glm": {"events": str(events), "hrf": "library", "denoise": "3", "tuning": str(model)},
            "network": {"events_port": 0, "control_port": -1, "decoder": addresses["betas"], "drain_s": 30.0},
            "threads": {"scanner": g.threads.scanner, "decoder": g.threads.decoder},
        })
        side = ScannerSide(cfg, on_volume=g.on_volume, on_beta=g.on_beta)
        stop = threading.Event()
        writer = threading.Thread(target=_write_at_pace, args=(files, work / "watch", tr_s, g.written, stop),
                                  daemon=True, name="rtdecode-bench-scanner")
        try:
            side.start()
            time.sleep(1.0)  # the load is up to speed before the first volume
            writer.start()
            _drive(side, g, volumes, deadline=time.monotonic() + volumes * tr_s + 120)
            wait_until = time.monotonic() + 60
            while time.monotonic() < wait_until and \
                    len({k for k in listener.retrievals if k[2] == "realtime"}) < len(g.sent):
                side.step(timeout=0.05)
        finally:
            stop.set()
            side.stop()
            side.net.close()
            for p in busy:
                p.kill()
                p.wait(10)
            stop_decoder(proc)
            listener.close()
        g.retrievals, g.reconstructions = listener.retrievals, listener.reconstructions
        g.read_back["decoder"] = _decoder_threads(work / "decoded" / "decoder.log")
    return _result(g)


def _drive(side, g: Gathered, volumes: int, deadline: float) -> None:
    """The scanner side's loop, timed: each step that handled volumes ends their time on the scanner side."""
    while side.processed < volumes and time.monotonic() < deadline:
        before = len(g.seen)
        side.step(timeout=0.02)
        end = time.time()
        for index, _latency, _handed in g.seen[before:]:
            if index in g.written:
                g.done_ms[index] = (end - g.written[index]) * 1e3
        if len(g.seen) - before == 1:  # one volume this step: the rest of the step is its GLM and betas
            g.glm_ms[g.seen[-1][0]] = (end - g.seen[-1][2]) * 1e3


def _result(g: Gathered) -> dict:
    """The figures and their table."""
    s, tr_ms = g.settings, g.settings["tr_s"] * 1e3
    last = s["volumes"] - 1  # its step also fits every trial again at the end of the run: reported apart
    got = {k[1]: r for k, r in g.retrievals.items() if k[2] == "realtime"}
    recon = [r[1].get("timings_ms", {}).get("reconstruction_ms", np.nan)
             for k, r in g.reconstructions.items() if k[2] == "realtime"]
    sent, written = g.sent, g.written
    rows = [
        _stats("volume file -> preprocessed and stored", [x[1] for x in g.seen], tr_ms),
        _stats("GLM per volume (trial estimates, betas out)", [ms for i, ms in g.glm_ms.items() if i != last], tr_ms),
        _stats("volume file -> scanner side done with it", [ms for i, ms in g.done_ms.items() if i != last], tr_ms),
        _stats("single-trial GLM estimate (AR(1), HRFs, 3 components)", [x[2] for x in sent.values()], tr_ms),
        _stats("decoder: prior (20 steps)", [r[1].get("timings_ms", {}).get("prior_ms", np.nan) for r in got.values()],
               tr_ms),
        _stats("decoder: reconstruction (stand-in)", recon, tr_ms),
        _stats("beta sent -> retrieval received", [(got[t][0] - sent[t][0]) * 1e3 for t in got if t in sent], tr_ms),
        _stats("trial's last volume file -> retrieval received",
               [(got[t][0] - written[sent[t][1] - 1]) * 1e3 for t in got if t in sent and sent[t][1] - 1 in written],
               tr_ms),
    ]
    end_of_run = g.glm_ms.get(last, float("nan"))
    head = (f"{s['volumes']} volumes of {'x'.join(map(str, s['shape']))} at TR {s['tr_s']:g} s, {s['n_voxels']} "
            f"voxels, {len(sent)} trials; threads: scanner side {g.threads.scanner}, decoder {g.threads.decoder} "
            f"(0: every core); {s['load']} busy process(es) at their defaults; {cores()} cores")
    table = [head, "", "| stage | median ms | p99 ms | n | at p99 |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['stage']} | {r['median_ms']:.0f} | {r['p99_ms']:.0f} | {r['n']} | "
              f"{'within' if r['within_tr'] else 'over'} the TR |" for r in rows]
    table += ["", f"end of run (the last volume's step: every trial fitted again): {end_of_run:.0f} ms",
              f"read back: scanner side {g.read_back['scanner']}; decoder {g.read_back['decoder']}"]
    return {"stage": "contention", **s, "tr_ms": tr_ms, "trials": len(sent), "cores": cores(),
            "threads": {"scanner": g.threads.scanner, "decoder": g.threads.decoder}, "read_back": g.read_back,
            "rows": rows, "end_of_run_ms": end_of_run, "within_tr": all(r["within_tr"] for r in rows),
            "markdown": "\n".join(table)}
