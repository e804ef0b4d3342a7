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
from pathlib import Path

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
    from rtdecode.config import denoise_count, needs_tuning
    from rtdecode.demo.settings import GLM_BEST
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.offline import session_folder, session_trials
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


def run_demo(out: Path, settings: DemoSettings | None = None, cache: Path | None = None,
             console: bool | None = None) -> dict:
    """Run the visit into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from calibration.build import calibrate, load_session
    from calibration.progress import Progress
    from calibration.report import write_report
    from calibration.splits import read_training_images, require_disjoint
    from calibration.trainer import TrainConfig
    from calibration.tuning import Grid
    from rtdecode.cache import cache_dir
    from rtdecode.config import config_from_dict, config_to_toml
    from rtdecode.demo.decoder_process import ResultListener, start_decoder, stop_decoder
    from rtdecode.demo.pretrained import shared_model, visits
    from rtdecode.demo.stream import stream_runs
    from rtdecode.demo.summary import latencies, pct, realtime_retrieval, report_grid
    from rtdecode.evaluate import evaluate_session
    from rtdecode.gallery.builtin import image_id
    from rtdecode.scanner import ScannerSide
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec
    from rtdecode.threads import apply_role, thread_env
    from rtdecode.wire.sockets import Publisher

    s = settings or DemoSettings()
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)  # a demo always starts a fresh visit
    cache = Path(cache) if cache is not None else cache_dir()
    watch, truth = out / "scanner-export", out / "ground-truth"
    watch.mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    spec = SubjectSpec(name="demo01", n_voxels=s.subject_voxels, seed=1, reliability=s.reliability,
                       physiology=s.physiology)
    latent = LatentSpace(dim=spec.latent_dim)
    # Held-out images (the hour's repeated ones, the real-time run's) come from the built-in test pool, which
    # no training set draws from; the hour's other images from the new-person pool, which pretraining never
    # shows (issue 35): held-out figures measure generalisation, fine-tuning meets new images, by construction.
    calib, live = visits(s, spec, latent)
    paradigm = calib.paradigm

    apply_role("calibration", s.threads.calibration, torch=True)  # nothing else runs yet: every core
    _say("1. shared model: a small MindEye2 pretrained on simulated subjects")
    t = time.monotonic()
    shared, built = shared_model(s, cache, latent, log=_say)
    timings["pretraining_s"] = time.monotonic() - t
    _say(f"   {'built and cached' if built else 'from the cache'}: {shared} ({timings['pretraining_s']:.0f} s)")
    seen = {image_id(i) for i in calib.shown} & read_training_images(shared)
    if seen:  # e.g. a shared model left in the cache by other code
        raise RuntimeError(f"{shared}: pretrained on {len(seen)} of the calibration hour's images (e.g. {min(seen)}); "
                           "a new person's images must be new to it (issue 35): remove that folder to rebuild it")

    first = calib.run(0)
    roi = np.zeros(first.shape, np.uint8)
    roi.ravel()[first.roi_index] = 1
    nib.save(nib.Nifti1Image(roi, first.affine), out / "visual-roi.nii")
    base = {
        "session": {"root": str(out / "sessions"), "subject": spec.name, "session": "01"},
        "scanner": {"watch_dir": str(watch), "tr_s": paradigm.tr_s, "volumes_per_run": s.volumes,
                    "missing_timeout_s": 5.0},
        "preprocess": {"mask": str(out / "visual-roi.nii")},
        "glm": {"events": str(truth / "series-{series:03d}_events.tsv")},
        "network": {"events_port": 0, "control_port": -1},
    }
    n_cal = s.calibration_runs * s.volumes
    _say(f"2. calibration hour: subject '{spec.name}', {s.calibration_runs} runs x {s.trials} images "
         f"({n_cal} volumes of {'x'.join(map(str, s.shape))} at {s.voxel_mm:g} mm, {len(first.roi_index)} visual "
         f"voxels), written as DICOM {s.calibration_speedup:g}x faster than the {paradigm.tr_s:g} s TR")
    t = time.monotonic()
    cfg = config_from_dict(base)
    side = ScannerSide(cfg)
    session = side.folder.path
    (session / "config.toml").write_text(config_to_toml(cfg))
    stream_runs(side, calib, list(range(s.calibration_runs)), 1, watch, truth, s.calibration_speedup)
    timings["calibration_scan_s"] = time.monotonic() - t
    _say(f"   {side.processed} volumes watched, motion-corrected, masked and stored in {session} "
         f"({timings['calibration_scan_s']:.0f} s)")

    _say("3. calibration (the GLM tuned on the hour, offline betas, then fine-tuning the shared model)")
    t = time.monotonic()
    model_dir = out / "model"
    glm_settings, tuning, glm_lines = _tuned_glm(s, session, model_dir, cache / "embeddings")
    data = load_session(session, spec.name, cache / "embeddings", glm=glm_settings, train_on=s.train_on, tuning=tuning)
    config = TrainConfig(epochs=s.calibrate_epochs, batch_size=24, max_lr=s.calibrate_lr, seed=s.seed,
                         checkpoint_s=60.0, cpu=True)
    grid = Grid(s.calibrate_tune, (s.calibrate_epochs,)) if s.calibrate_tune else None  # on calibration data only
    calibrate(data, model_dir, config, pretrained=shared, progress=Progress("   calibrating"), source=str(session),
              compare_scratch=s.compare_scratch, tune=grid)
    timings["calibration_s"] = time.monotonic() - t
    cal_report = write_report(model_dir, session=session)
    summary_cal = json.loads((model_dir / "training.json").read_text())
    ev = summary_cal["evaluation"]
    _say(f"   {len(data.betas)} trials; held-out {ev['n_way']}-way top-1 {pct(ev['top1_brain_to_image'])} "
         f"(chance {pct(ev['chance'])}); {timings['calibration_s']:.0f} s; report {cal_report}")

    captioner = _captioner(data, out / "captioner")
    shown_live = {image_id(i) for i in live.shown}
    require_disjoint(shown_live, {"pretraining": read_training_images(shared), "calibration": set(data.images),
                                  "captioner": set(captioner.trained_on)})
    _say(f"   captions: the demo's stand-in captioner, trained on {len(captioner.trained_on)} calibration images "
         "outside the test pool; refinement off (SDXL is not run on the CPU)")
    _say(f"4. real-time run: {s.trials} new images (none in any training set), files {s.realtime_speedup:g}x "
         "faster than the TR; decoder in its own process")
    gallery, decoded = out / "gallery", out / "decoded"
    live.save_stimuli(gallery)
    # From here two processes share the cores: this one as the scanner side, the decoder (issue 27).
    scanner_threads = apply_role("scanner", s.threads.scanner)
    proc, addresses = start_decoder(model_dir, gallery, decoded, threads=s.threads.decoder, captioner=out / "captioner")
    listener = ResultListener(addresses["results"])
    rt_cfg = config_from_dict({**base, "glm": {**base["glm"], "zscore": "calibration", "zscore_stats": str(model_dir),
                                               **glm_lines},
                               "network": {**base["network"], "decoder": addresses["betas"], "drain_s": 60.0}})
    publisher = Publisher("tcp://127.0.0.1:0", replay=500)  # a console that starts late catches up
    viewer = None
    if console if console is not None else _has_display():
        viewer = subprocess.Popen([sys.executable, "-m", "rtdecode.cli", "console", "--events", publisher.address,
                                   "--results", addresses["results"], "--gallery", str(gallery),
                                   "--threads", str(s.threads.console)],
                                  env={**os.environ, **thread_env(s.threads.console)})
        time.sleep(3.0)  # let the window come up before the first volume
    t = time.monotonic()
    try:
        rt_side = ScannerSide(rt_cfg, publisher=publisher)
        runs_before = len(rt_side.runs)
        stream_runs(rt_side, live, list(range(s.realtime_runs)), s.calibration_runs + 1, watch, truth,
                    s.realtime_speedup, drop=frozenset(i for i in s.realtime_dropped if i < s.volumes))
        expected = 2 * s.trials * s.realtime_runs  # real-time and end-of-run betas
        if not listener.wait_for(expected, timeout_s=120):
            _say(f"   warning: {len(listener.reconstructions)} of {expected} reconstructions arrived in time")
    finally:
        stop_decoder(proc)
        listener.close()
        publisher.close()
    timings["realtime_s"] = time.monotonic() - t
    apply_role("calibration", s.threads.calibration)  # the live part is over: every core for the rest
    run_number = runs_before + 1
    scores = realtime_retrieval(decoded, run_number, seed=s.seed)
    stages = latencies(session, run_number, decoded, listener)

    _say("5. results")
    shots: list[Path] = []
    if viewer is None:
        shots = _screenshots(out / "screenshots", session, decoded, gallery)
    grid = report_grid(decoded, scores, out / "realtime_grid.png")
    # MindEye2's metrics on the real-time run (no feature-network weights here: those are marked not available).
    evaluation, eval_paths = evaluate_session(session, decoded, out / "evaluation", seed=s.seed)
    timings["total_s"] = time.monotonic() - t0
    summary = {"settings": s.to_dict(), "retrieval": {k: v for k, v in scores.items()
                                                      if k not in ("top5", "images", "keys")},
               "held_out_calibration": ev, "scratch": summary_cal.get("scratch"),
               "evaluation": [r for r in evaluation.summary if r["run"] == run_number and r["repeats"] == "single-trial"],
               "captions": _caption_rows(eval_paths.get("captions_csv"), run_number),
               "latency_ms": [{"stage": n, "median": m, "p99": p, "n": c} for n, m, p, c in stages],
               "timings_s": timings, "tr_s": paradigm.tr_s, "scanner_threads": scanner_threads, "realtime_dropped": [i for i in s.realtime_dropped if i < s.volumes],
               "paths": {"session": str(session), "model": str(model_dir), "decoded": str(decoded),
                         "calibration_report": str(cal_report), "grid": str(grid),
                         "evaluation": str(eval_paths["summary_md"]),
                         "screenshots": [str(p) for p in shots], "shared_model": str(shared)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report = _write_report(out / "report.md", summary)
    _print_summary(summary, report)
    if viewer is not None:
        _say("   the console stays open; close it to finish")
        viewer.wait()
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


def _caption_rows(table: Path | None, run: int) -> list[dict]:
    """The real-time run's captions and their scores, from the evaluation's captions.csv."""
    import csv

    if table is None or not Path(table).is_file():
        return []
    with open(table, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["run"] == str(run)]


def _caption_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["", "No captions were scored (the decoder ran without a captioner)."]
    from rtdecode.evaluate.captions import chance

    lines = ["", "| captions, real-time run (stand-in captioner; painter's captions as reference) | trials | METEOR | "
                 "ROUGE-1 | ROUGE-L | chance METEOR | chance ROUGE-L |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for version in sorted({r["version"] for r in rows}):
        mine = [r for r in rows if r["version"] == version]
        means = [sum(float(r[m]) for r in mine) / len(mine) for m in ("METEOR", "ROUGE-1", "ROUGE-L")]
        means += list(chance([dict(r) for r in mine]).values())  # copies: chance() sets its figures in the rows
        lines.append(f"| {version} | {len(mine)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += ["", "Chance: each caption against another trial's reference (the painter's captions share a template)."]
    lines += ["", "MindEye2 (subject 1, 40 h, GIT on COCO): METEOR 0.248. Not comparable: these are painted scenes, "
                  "a stand-in token space and a captioner of a few thousand numbers; refinement is off (no SDXL on "
                  "the CPU).", "", "| trial | shown | caption from the brain | the painter's caption |",
              "| --- | --- | --- | --- |"]
    for r in [r for r in rows if r["version"] == "realtime"][:6]:
        lines.append(f"| {r['trial']} | {r['image']} | {r['caption']} | {r['reference']} |")
    return lines


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


def _lines(summary: dict) -> list[str]:
    from rtdecode.demo.summary import pct

    r, ev, tr = summary["retrieval"], summary["held_out_calibration"], summary["tr_s"]
    lines = ["| retrieval, real-time run (new images) | top-1 | chance |", "| --- | --- | --- |"]
    if "fifty_way" in r:
        lines.append(f"| 50-way, brain -> image (30 draws) | {pct(r['fifty_way'])} | 2% |")
    lines += [f"| 2-way (every pair) | {pct(r['two_way'])} | 50% |",
              f"| {r['gallery_size']}-way (the run's whole gallery) | {pct(r['gallery_top1'])} | "
              f"{pct(1 / r['gallery_size'])} |",
              f"| calibration held-out, {ev['n_way']}-way (repeats averaged), pretrained then fine-tuned, 1 seed | "
              f"{pct(ev['top1_brain_to_image'])} | {pct(ev['chance'])} |"]
    if summary.get("scratch"):
        sc = summary["scratch"]
        lines.append(f"| same held-out images, model trained from scratch on the hour, 1 seed | "
                     f"{pct(sc['top1_brain_to_image'])} | {pct(sc['chance'])} |")
    lines += ["", "Held-out and real-time images come from the built-in test pool, which no training set "
                  "draws from (pretraining included)."]
    if summary.get("evaluation"):
        lines += ["", "| rtdecode evaluate, real-time run (single-trial) | trials | PixCorr | SSIM | 50-way, for each "
                      "brain sample which image / for each image which brain sample | all-way, the same two |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in summary["evaluation"]:
            def both(a: str, b: str, row=row) -> str:
                return f"{pct(row.get(a, float('nan')))} / {pct(row.get(b, float('nan')))}"
            lines.append(f"| {row['version']} | {row['trials']} | {_num(row['PixCorr'])} | {_num(row['SSIM'])} | "
                         f"{both('image_for_brain_top1_50', 'brain_for_image_top1_50')} | "
                         f"{both('image_for_brain_top1_all', 'brain_for_image_top1_all')} "
                         f"(of {row.get('retrieval_images', 0)}) |")
        lines += ["", "AlexNet, InceptionV3, CLIP, EffNet-B and SwAV are not available in the demo (no feature-network "
                      "weights; docs/evaluation.md), and the stand-in's reconstructions are coarse by design."]
    lines += _caption_lines(summary.get("captions") or [])
    lines += ["", f"| stage (real-time run) | median ms | p99 ms | n | TR = {tr * 1e3:.0f} ms |",
              "| --- | --- | --- | --- | --- |"]
    for row in summary["latency_ms"]:
        ok = "within" if row["p99"] <= tr * 1e3 else "over"
        lines.append(f"| {row['stage']} | {row['median']:.0f} | {row['p99']:.0f} | {row['n']} | {ok} |")
    threads = summary["settings"].get("threads")
    if threads:
        lines += ["", f"Threads (torch, OpenMP, BLAS) in the real-time run: scanner side {threads['scanner']}, decoder "
                      f"{threads['decoder']} (0: every core; docs/real-scanner.md, one machine)."]
    dropped = summary.get("realtime_dropped") or []
    if dropped:
        named = ", ".join(f"{i + 1} (index {i})" for i in dropped)  # from 1, as the console; the index as in BIDS
        lines += ["", f"Volume(s) {named} of the real-time run were withheld on purpose "
                  "(an export that loses a file): the scanner side declared them missing, the GLM kept the time axis, "
                  "and the console marks the gap."]
    t = summary["timings_s"]
    lines += ["", f"Pretraining {t['pretraining_s']:.0f} s (0 when cached), calibration scan {t['calibration_scan_s']:.0f} s, "
              f"calibration {t['calibration_s']:.0f} s, real-time run {t['realtime_s']:.0f} s; "
              f"total {t['total_s'] / 60:.1f} min."]
    return lines


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _write_report(path: Path, summary: dict) -> Path:
    p = summary["paths"]
    rel = {k: os.path.relpath(v, path.parent) for k, v in p.items() if isinstance(v, str)}
    lines = ["# rtdecode demo: one simulated visit", "",
             "Simulated data and a CPU-sized model in a stand-in token space (not CLIP); reconstructions are the "
             "stand-in's coarse inversion of the predicted tokens, not SDXL unCLIP images.", "", *_lines(summary), "",
             "## Real-time run: shown, reconstructed, top-5 retrieved", "", f"![grid]({rel['grid']})", ""]
    for shot in p["screenshots"]:
        lines += [f"![{Path(shot).stem}]({os.path.relpath(shot, path.parent)})", ""]
    lines += ["## Where everything went", "",
              *[f"- {k.replace('_', ' ')}: `{v}`" for k, v in p.items() if isinstance(v, str)]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _print_summary(summary: dict, report: Path) -> None:
    for line in _lines(summary):
        _say("   " + line)
    _say(f"   report: {report}")
    for k, v in summary["paths"].items():
        if isinstance(v, str):
            _say(f"   {k.replace('_', ' ')}: {v}")
