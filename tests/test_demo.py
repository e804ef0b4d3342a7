"""The demo, shortened: a whole simulated visit through the real code paths, in a few minutes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
def test_short_demo_runs_the_whole_visit(tmp_path):
    from rtdecode.demo import DemoSettings, run_demo

    settings = DemoSettings.short()
    summary = run_demo(tmp_path / "demo", settings, cache=tmp_path / "cache", console=False)
    out = tmp_path / "demo"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    paths = summary["paths"]
    # Calibration: every calibration volume went through the watcher and the GLM into the session folder.
    session = tmp_path / "demo" / "sessions" / "sub-demo01" / "ses-01"
    assert paths["session"] == str(session)
    runs = list(csv.DictReader(open(session / "runs.tsv"), delimiter="\t"))
    assert len(runs) == settings.calibration_runs + settings.realtime_runs
    deriv = session / "derivatives" / "rtdecode" / "func"
    motion = list(csv.DictReader(open(next(deriv.glob("*_run-01_desc-confounds_timeseries.tsv"))), delimiter="\t"))
    truth = np.loadtxt(out / "ground-truth" / "series-001_motion_truth.tsv", skiprows=1)
    est = np.array([[float(r[c]) for c in ("trans_x", "trans_y", "trans_z")] for r in motion if r["status"] == "ok"])
    assert len(est) == settings.volumes and np.median(np.abs(est - truth[: len(est), :3])) < 0.3
    # The model folder and its report.
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "report" / "report.md").exists()
    # Issue 35: the hour's training images are new to the shared model, as a new NSD subject's are.
    trained = json.loads((out / "model" / "training.json").read_text())["calibration_images_in_pretraining"]
    assert trained["in_pretraining"] == 0 and trained["images"] > 40, trained
    # Real-time run: every trial decoded by the decoder process and received over ZeroMQ.
    assert summary["retrieval"]["trials"] == settings.trials
    stages = {row["stage"]: row for row in summary["latency_ms"]}
    assert all(row["n"] > 0 for row in stages.values()), stages
    assert stages["single-trial GLM estimate (AR(1))"]["n"] == settings.trials
    (session_out,) = (out / "decoded").glob("sub-*/ses-*")  # one session, in its own folder
    decoded = list(csv.DictReader(open(session_out / "results.tsv"), delimiter="\t"))
    assert {r["run"] for r in decoded} == {str(settings.calibration_runs + 1)}  # calibration betas never sent
    assert len(decoded) == 2 * settings.trials  # real-time and end-of-run, each once
    assert len(list((session_out / "images").glob("*.png"))) == 2 * settings.trials
    # Results: screenshots (headless), the grid and the report that links them.
    assert [p.rsplit("/", 1)[1] for p in paths["screenshots"]] == ["console.png", "alignment.png", "display.png"]
    report = (out / "report.md").read_text()
    assert "realtime_grid.png" in report and "2-way" in report and "screenshots/console.png" in report
    from PIL import Image

    assert Image.open(out / "realtime_grid.png").size[1] > 100
    # rtdecode evaluate on the real-time run: both versions, pixel metrics and retrieval; its all-way retrieval
    # agrees with the demo's own count, computed another way (the stand-in embedder directly).
    evaluation = {r["version"]: r for r in summary["evaluation"]}
    assert set(evaluation) == {"realtime", "endofrun"} and all(r["trials"] == settings.trials for r in evaluation.values())
    assert evaluation["realtime"]["PixCorr"] is not None and evaluation["realtime"]["SSIM"] is not None
    assert evaluation["realtime"]["image_for_brain_top1_all"] == pytest.approx(summary["retrieval"]["gallery_top1"])
    notes = Path(paths["evaluation"]).read_text()
    assert "run 1 (realtime): not decoded" in notes and "AlexNet(2): not available" in notes
    assert "rtdecode evaluate, real-time run" in report
    # Captions: every real-time trial's, from the stand-in captioner trained outside the test pool, scored.
    captions = {(r["version"], r["trial"]): r["caption"] for r in summary["captions"]}
    assert len(captions) == 2 * settings.trials and all(captions.values())
    assert "caption from the brain" in report and "chance METEOR" in report
    # Every run of the visit, calibration hour included, was also written as BIDS as it ended.
    from bids import BIDSLayout

    layout = BIDSLayout(str(out / "sessions"), validate=True, derivatives=True)
    n_runs = settings.calibration_runs + settings.realtime_runs
    assert layout.get_runs() == list(range(1, n_runs + 1)) and layout.get_tasks() == ["rt"]
    assert len(layout.get(desc="endofrun", suffix="betas", extension=".nii.gz", scope="derivatives")) == n_runs
    # A second run reuses the cached shared model.
    assert summary["timings_s"]["pretraining_s"] > 0
