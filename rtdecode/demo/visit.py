"""``rtdecode demo``: one simulated single visit, end to end, through the real code paths.

1. a shared model: a small MindEye2 pretrained on simulated subjects (built once, then cached);
2. the calibration hour: a new simulated subject's task runs written as DICOM files into a watch
   folder; the real watcher, preprocessing and GLM record them into the session folder;
3. calibration of the new subject from that session folder (offline GLM, then fine-tuning);
4. a real-time run: the decoder in its own process (``rtdecode decode``), acknowledged betas over
   ZeroMQ as each trial's response is in, results published and received over ZeroMQ;
5. the console on screen when there is a display; headless, console screenshots and a report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from rtdecode.demo.settings import DemoSettings


def _tuned_glm(s: DemoSettings, session: Path, model_dir: Path, cache: Path | None = None):
    """The demo's GLM (settings.GLM_BEST): tuned on the calibration hour's training data when it needs a tuning
    (``cache``: the image embeddings' cache); returns the offline settings, the tuning and the scanner side's
    [glm] lines, and says which configuration runs."""
    from calibration.build import standin_tokens
    from calibration.data import SubjectData
    from calibration.splits import repeated_images
    from rtdecode.base.config import denoise_count, needs_tuning
    from rtdecode.base.recorded import session_folder, session_trials
    from rtdecode.demo.settings import GLM_BEST
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.runner import tuned_count
    from rtdecode.glm.tuning import describe, tune_session

    tuning = None
    if needs_tuning(s.glm_hrf, s.glm_denoise):
        # Training data only: the calibration runs, less the images calibrate holds out (its default, the repeated
        # ones); without repeats left the images' tokens score the tuning (docs/glm.md).
        runs = list(range(1, s.calibration_runs + 1))
        shown = [im for im, r in zip(*session_trials(session_folder(session)), strict=True) if r in runs]
        held = repeated_images(SubjectData("demo", np.zeros((len(shown), 0)), shown, np.zeros((len(shown), 0, 0))))
        tuning = tune_session(session, out=model_dir, runs=runs, held_out=held,
                              features=lambda ids: standin_tokens(ids, cache))
        _say(f"   {describe(tuning)}")
    # The scanner side subtracts the calibration hour's components (glm.denoise_mode "subtract"), whose
    # count is chosen per tier: the training betas' tier decides it (None: end of run).
    delay = s.train_delay_s if s.train_on != "endofrun" else None
    n = denoise_count(s.glm_denoise, tuned_count(tuning, "subtract", delay))
    chosen = {"hrf": s.glm_hrf, "denoise": s.glm_denoise, "train_on": s.train_on}
    name = GLM_BEST["name"] if all(GLM_BEST[k] == v for k, v in chosen.items()) else "as set"
    _say(f"   GLM configuration {name}: hrf {s.glm_hrf}, denoise {s.glm_denoise} ({n} components), trained on "
         f"{s.train_on} betas" + (f" at {s.train_delay_s:g} s" if s.train_on != "endofrun" else "")
         + " (docs/glm.md, 'Which to use: measured')")
    lines = {"hrf": s.glm_hrf, "denoise": s.glm_denoise, "delay_s": s.train_delay_s,
             **({"tuning": str(model_dir)} if tuning is not None else {})}
    return GLMSettings(hrf=s.glm_hrf, denoise=n, delay_s=s.train_delay_s), tuning, lines


def _say(text: str) -> None:
    print(text, flush=True)


def _has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "") == "offscreen":
        return False
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


@dataclass
class _Demo:
    """The visit as it goes: the settings and folders, the simulated people, then what each step made."""

    s: DemoSettings
    out: Path
    cache: Path
    watch: Path  # the scanner's export folder
    truth: Path  # ground truth: events, motion, true betas
    spec: Any  # the simulated subject
    latent: Any
    paradigm: Any
    calib: Any  # the calibration hour's visit
    live: Any  # the real-time run's visit
    timings: dict[str, float] = field(default_factory=dict)
    shared: Path | None = None  # 1. the shared model
    base: dict = field(default_factory=dict)  # 2. the scanner side's settings
    session: Path | None = None
    model_dir: Path | None = None  # 3. the calibrated model
    data: Any = None
    glm_lines: dict = field(default_factory=dict)
    summary_cal: dict = field(default_factory=dict)
    cal_report: Path | None = None
    gallery: Path | None = None  # 4. the real-time run
    decoded: Path | None = None
    listener: Any = None
    viewer: subprocess.Popen | None = None
    scanner_threads: Any = None
    run_number: int = 0


def run_demo(out: Path, settings: DemoSettings | None = None, cache: Path | None = None,
             console: bool | None = None) -> dict:
    """Run the visit into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from rtdecode.base.cache import cache_dir
    from rtdecode.base.threads import apply_role

    s = settings or DemoSettings()
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)  # a demo always starts a fresh visit
    cache = Path(cache) if cache is not None else cache_dir()
    watch, truth = out / "scanner-export", out / "ground-truth"
    watch.mkdir(parents=True)
    t0 = time.monotonic()
    d = _plan(s, out, cache, watch, truth)
    apply_role("calibration", s.threads.calibration, torch=True)  # nothing else runs yet: every core
    _shared_model(d)
    _calibration_hour(d)
    _calibration(d)
    _captions(d)
    _realtime_run(d, console)
    apply_role("calibration", s.threads.calibration)  # the live part is over: every core for the rest
    summary = _results(d, t0)
    if d.viewer is not None:
        _say("   the console stays open; close it to finish")
        d.viewer.wait()
    return summary


def _plan(s: DemoSettings, out: Path, cache: Path, watch: Path, truth: Path) -> _Demo:
    """The simulated subject and its two visits: the calibration hour and the real-time run."""
    from rtdecode.demo.pretrained import visits
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec

    spec = SubjectSpec(name="demo01", n_voxels=s.subject_voxels, seed=1, reliability=s.reliability,
                       physiology=s.physiology)
    latent = LatentSpace(dim=spec.latent_dim)
    # Held-out images (the hour's repeated ones, the real-time run's) come from the built-in test pool, which
    # no training set draws from; the hour's other images from the new-person pool, which pretraining never
    # shows (issue 35): held-out figures measure generalisation, fine-tuning meets new images, by construction.
    calib, live = visits(s, spec, latent)
    paradigm = calib.paradigm
    return _Demo(s, out, cache, watch, truth, spec, latent, paradigm, calib, live)


def _shared_model(d: _Demo) -> None:
    """1. The shared model, pretrained on simulated subjects (built once, then cached); never on the calibration
    hour's images (issue 35)."""
    from calibration.splits import read_training_images
    from rtdecode.demo.pretrained import shared_model
    from rtdecode.gallery.builtin import image_id

    _say("1. shared model: a small MindEye2 pretrained on simulated subjects")
    t = time.monotonic()
    d.shared, built = shared_model(d.s, d.cache, d.latent, log=_say)
    d.timings["pretraining_s"] = time.monotonic() - t
    _say(f"   {'built and cached' if built else 'from the cache'}: {d.shared} ({d.timings['pretraining_s']:.0f} s)")
    seen = {image_id(i) for i in d.calib.shown} & read_training_images(d.shared)
    if seen:  # e.g. a shared model left in the cache by other code
        raise RuntimeError(f"{d.shared}: pretrained on {len(seen)} of the calibration hour's images (e.g. {min(seen)}); "
                           "a new person's images must be new to it (issue 35): remove that folder to rebuild it")


def _calibration_hour(d: _Demo) -> None:
    """2. The calibration hour: the task runs written as DICOM files, recorded by the real scanner side."""
    from rtdecode.base.config import config_from_dict, config_to_toml
    from rtdecode.demo.stream import stream_runs
    from rtdecode.scanner import ScannerSide

    s, out, paradigm = d.s, d.out, d.paradigm
    first = d.calib.run(0)
    roi = np.zeros(first.shape, np.uint8)
    roi.ravel()[first.roi_index] = 1
    nib.save(nib.Nifti1Image(roi, first.affine), out / "visual-roi.nii")
    d.base = {
        "session": {"root": str(out / "sessions"), "subject": d.spec.name, "session": "01"},
        "scanner": {"watch_dir": str(d.watch), "tr_s": paradigm.tr_s, "volumes_per_run": s.volumes,
                    "missing_timeout_s": 5.0},
        "preprocess": {"mask": str(out / "visual-roi.nii")},
        "glm": {"events": str(d.truth / "series-{series:03d}_events.tsv")},
        "network": {"events_port": 0, "control_port": -1},
    }
    n_cal = s.calibration_runs * s.volumes
    _say(f"2. calibration hour: subject '{d.spec.name}', {s.calibration_runs} runs x {s.trials} images "
         f"({n_cal} volumes of {'x'.join(map(str, s.shape))} at {s.voxel_mm:g} mm, {len(first.roi_index)} visual "
         f"voxels), written as DICOM {s.calibration_speedup:g}x faster than the {paradigm.tr_s:g} s TR")
    t = time.monotonic()
    cfg = config_from_dict(d.base)
    side = ScannerSide(cfg)
    d.session = session = side.folder.path
    (session / "config.toml").write_text(config_to_toml(cfg))
    stream_runs(side, d.calib, list(range(s.calibration_runs)), 1, d.watch, d.truth, s.calibration_speedup)
    d.timings["calibration_scan_s"] = time.monotonic() - t
    _say(f"   {side.processed} volumes watched, motion-corrected, masked and stored in {session} "
         f"({d.timings['calibration_scan_s']:.0f} s)")


def _calibration(d: _Demo) -> None:
    """3. Calibration from the session folder: the GLM tuned on the hour, offline betas, fine-tuning."""
    from calibration.build import calibrate, load_session
    from calibration.progress import Progress
    from calibration.report import write_report
    from calibration.trainer import TrainConfig
    from calibration.tuning import Grid
    from rtdecode.demo.summary import pct

    s, session = d.s, d.session
    _say("3. calibration (the GLM tuned on the hour, offline betas, then fine-tuning the shared model)")
    t = time.monotonic()
    d.model_dir = model_dir = d.out / "model"
    glm_settings, tuning, d.glm_lines = _tuned_glm(s, session, model_dir, d.cache / "embeddings")
    d.data = data = load_session(session, d.spec.name, d.cache / "embeddings", glm=glm_settings, train_on=s.train_on,
                                 tuning=tuning)
    config = TrainConfig(epochs=s.calibrate_epochs, batch_size=24, max_lr=s.calibrate_lr, seed=s.seed,
                         checkpoint_s=60.0, cpu=True)
    grid = Grid(s.calibrate_tune, (s.calibrate_epochs,)) if s.calibrate_tune else None  # on calibration data only
    calibrate(data, model_dir, config, pretrained=d.shared, progress=Progress("   calibrating"), source=str(session),
              compare_scratch=s.compare_scratch, tune=grid)
    d.timings["calibration_s"] = time.monotonic() - t
    d.cal_report = write_report(model_dir, session=session)
    d.summary_cal = json.loads((model_dir / "training.json").read_text())
    ev = d.summary_cal["evaluation"]
    _say(f"   {len(data.betas)} trials; held-out {ev['n_way']}-way top-1 {pct(ev['top1_brain_to_image'])} "
         f"(chance {pct(ev['chance'])}); {d.timings['calibration_s']:.0f} s; report {d.cal_report}")


def _captions(d: _Demo) -> None:
    """The stand-in captioner, trained on calibration images only; no real-time image in any training set."""
    from calibration.splits import read_training_images, require_disjoint
    from rtdecode.gallery.builtin import image_id

    captioner = _captioner(d.data, d.out / "captioner")
    shown_live = {image_id(i) for i in d.live.shown}
    require_disjoint(shown_live, {"pretraining": read_training_images(d.shared), "calibration": set(d.data.images),
                                  "captioner": set(captioner.trained_on)})
    _say(f"   captions: the demo's stand-in captioner, trained on {len(captioner.trained_on)} calibration images "
         "outside the test pool; refinement off (SDXL is not run on the CPU)")


def _realtime_run(d: _Demo, console: bool | None) -> None:
    """4. The real-time run: the decoder in its own process, betas and results over ZeroMQ, the console
    on screen when there is a display."""
    from rtdecode.base.config import config_from_dict
    from rtdecode.base.threads import apply_role, thread_env
    from rtdecode.demo.decoder_process import ResultListener, start_decoder, stop_decoder
    from rtdecode.demo.stream import stream_runs
    from rtdecode.scanner import ScannerSide
    from rtdecode.wire.sockets import Publisher

    s, out, base, model_dir = d.s, d.out, d.base, d.model_dir
    _say(f"4. real-time run: {s.trials} new images (none in any training set), files {s.realtime_speedup:g}x "
         "faster than the TR; decoder in its own process")
    d.gallery, d.decoded = gallery, decoded = out / "gallery", out / "decoded"
    d.live.save_stimuli(gallery)
    # From here two processes share the cores: this one as the scanner side, the decoder (issue 27).
    d.scanner_threads = apply_role("scanner", s.threads.scanner)
    proc, addresses = start_decoder(model_dir, gallery, decoded, threads=s.threads.decoder, captioner=out / "captioner")
    d.listener = listener = ResultListener(addresses["results"])
    rt_cfg = config_from_dict({**base, "glm": {**base["glm"], "zscore": "calibration", "zscore_stats": str(model_dir),
                                               **d.glm_lines},
                               "network": {**base["network"], "decoder": addresses["betas"], "drain_s": 60.0}})
    publisher = Publisher("tcp://127.0.0.1:0", replay=500)  # a console that starts late catches up
    if console if console is not None else _has_display():
        d.viewer = subprocess.Popen([sys.executable, "-m", "rtdecode.cli", "console", "--events", publisher.address,
                                     "--results", addresses["results"], "--gallery", str(gallery),
                                     "--threads", str(s.threads.console)],
                                    env={**os.environ, **thread_env(s.threads.console)})
        time.sleep(3.0)  # let the window come up before the first volume
    t = time.monotonic()
    try:
        rt_side = ScannerSide(rt_cfg, publisher=publisher)
        runs_before = len(rt_side.runs)
        stream_runs(rt_side, d.live, list(range(s.realtime_runs)), s.calibration_runs + 1, d.watch, d.truth,
                    s.realtime_speedup, drop=frozenset(i for i in s.realtime_dropped if i < s.volumes))
        expected = 2 * s.trials * s.realtime_runs  # real-time and end-of-run betas
        if not listener.wait_for(expected, timeout_s=120):
            _say(f"   warning: {len(listener.reconstructions)} of {expected} reconstructions arrived in time")
    finally:
        stop_decoder(proc)
        listener.close()
        publisher.close()
    d.timings["realtime_s"] = time.monotonic() - t
    d.run_number = runs_before + 1


def _results(d: _Demo, t0: float) -> dict:
    """5. The results: scores, latencies, screenshots, the evaluation, summary.json and report.md."""
    from rtdecode.demo.summary import (
        caption_rows,
        latencies,
        realtime_retrieval,
        report_grid,
        write_report,
    )
    from rtdecode.evaluate import evaluate_session

    s, out, session, decoded, run_number = d.s, d.out, d.session, d.decoded, d.run_number
    scores = realtime_retrieval(decoded, run_number, seed=s.seed)
    stages = latencies(session, run_number, decoded, d.listener)

    _say("5. results")
    shots: list[Path] = []
    if d.viewer is None:
        shots = _screenshots(out / "screenshots", session, decoded, d.gallery)
    grid = report_grid(decoded, scores, out / "realtime_grid.png")
    # MindEye2's metrics on the real-time run (no feature-network weights here: those are marked not available).
    evaluation, eval_paths = evaluate_session(session, decoded, out / "evaluation", seed=s.seed)
    d.timings["total_s"] = time.monotonic() - t0
    summary = {"settings": s.to_dict(), "retrieval": {k: v for k, v in scores.items()
                                                      if k not in ("top5", "images", "keys")},
               "held_out_calibration": d.summary_cal["evaluation"], "scratch": d.summary_cal.get("scratch"),
               "evaluation": [r for r in evaluation.summary if r["run"] == run_number and r["repeats"] == "single-trial"],
               "captions": caption_rows(eval_paths.get("captions_csv"), run_number),
               "latency_ms": [{"stage": n, "median": m, "p99": p, "n": c} for n, m, p, c in stages],
               "timings_s": d.timings, "tr_s": d.paradigm.tr_s, "scanner_threads": d.scanner_threads,
               "realtime_dropped": [i for i in s.realtime_dropped if i < s.volumes],
               "paths": {"session": str(session), "model": str(d.model_dir), "decoded": str(decoded),
                         "calibration_report": str(d.cal_report), "grid": str(grid),
                         "evaluation": str(eval_paths["summary_md"]),
                         "screenshots": [str(p) for p in shots], "shared_model": str(d.shared)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report = write_report(out / "report.md", summary)
    _print_summary(summary, report)
    return summary


def _captioner(data, folder: Path):
    """The demo's captioner, trained on the calibration hour's images outside the test pool only (its
    held-out repeats are in the test pool, as every real-time image is: rtdecode.gallery.splits)."""
    from rtdecode.gallery.captions import fit_captioner
    from rtdecode.gallery.splits import is_test_image

    keep = [k for k, image in enumerate(data.images) if not is_test_image(image)]
    captioner = fit_captioner([data.images[k] for k in keep], data.tokens[keep])
    captioner.save(folder)
    return captioner


def _screenshots(folder: Path, session: Path, decoded: Path, gallery: Path) -> list[Path]:
    """The console and the display drawn offscreen from the session and the decoder's output (their own
    processes: Qt stays in gui/)."""
    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    for name, window, extra in (("console", "console", []), ("alignment", "console", ["--tab", "alignment"]),
                                ("display", "display", [])):
        path = folder / f"{name}.png"
        subprocess.run([sys.executable, "-m", "rtdecode.cli", window, "--replay", str(session), "--decoded",
                        str(decoded), "--gallery", str(gallery), "--screenshot", str(path), *extra],
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        shots.append(path)
    return shots


def _print_summary(summary: dict, report: Path) -> None:
    from rtdecode.demo.summary import report_lines

    for line in report_lines(summary):
        _say("   " + line)
    _say(f"   report: {report}")
    for k, v in summary["paths"].items():
        if isinstance(v, str):
            _say(f"   {k.replace('_', ' ')}: {v}")
