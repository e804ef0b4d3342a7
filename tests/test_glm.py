"""The single-trial GLM: nilearn parity, missing volumes, events errors, z-scoring, scanner side, offline."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from rtdecode.base.events import EventsError, events_from_records, read_events
from rtdecode.cli import main
from rtdecode.glm.design import cosine_drift, event_regressor, frame_times
from rtdecode.glm.estimate import ar1_beta
from rtdecode.glm.incremental import GLMSettings, IncrementalGLM
from rtdecode.glm.normalize import FixedZScore, RepeatAverager, RunningZScore
from rtdecode.glm.store import BetaStore
from rtdecode.simulator.scanner import write_run
from rtdecode.wire.sockets import Publisher, Subscriber

from conftest import SideThread, drain, make_config


@pytest.fixture(scope="module")
def task_run(small_visit):
    """Run 1 of the small visit in memory: volumes, ROI vectors, motion in the session's units."""
    run = small_visit.run(0)
    vols = np.stack(list(small_visit.run(0).iter_volumes()))
    motion = np.c_[run.motion[:, :3], np.rad2deg(run.motion[:, 3:])]
    return run, vols, vols.reshape(len(vols), -1)[:, run.roi_index], motion


def _nilearn_beta(run, vols, mask, motion, trial, n, noise_model):
    from nilearn.glm.first_level import FirstLevelModel

    known = np.flatnonzero(run.events.onset <= (n - 1) * 1.5)
    events = pd.DataFrame({"onset": run.events.onset[known], "duration": run.events.duration[known],
                           "trial_type": ["probe" if k == trial else "reference" for k in known]})
    img = nib.Nifti1Image(np.moveaxis(vols[:n], 0, -1), run.affine)
    model = FirstLevelModel(t_r=1.5, slice_time_ref=0, hrf_model="glover", drift_model="cosine", high_pass=0.01,
                            mask_img=nib.Nifti1Image(mask.astype(np.uint8), run.affine), signal_scaling=False,
                            smoothing_fwhm=None, noise_model=noise_model, minimize_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, events=events, confounds=pd.DataFrame(motion[:n], columns=[f"m{i}" for i in range(6)]))
        effect = model.compute_contrast("probe", output_type="effect_size")
    return np.asarray(effect.dataobj)[mask]


def test_design_columns_equal_nilearns():
    from nilearn.glm.first_level import compute_regressor
    from nilearn.signal import create_cosine_drift

    times = frame_times(137, 1.5)
    onsets, durations = np.array([4.5, 8.5, 12.7, 61.0]), np.array([3.0, 3.0, 1.0, 0.0])
    expected, _ = compute_regressor(np.vstack([onsets, durations, np.ones(4)]), "glover", times)
    np.testing.assert_allclose(event_regressor(onsets, durations, times, 1.5), expected[:, 0], atol=1e-12)
    np.testing.assert_allclose(cosine_drift(0.01, times), create_cosine_drift(0.01, times)[:, :-1], atol=1e-12)


@pytest.mark.parametrize("noise_model, floor", [("ols", 0.999), ("ar1", 0.99)])
def test_realtime_betas_match_nilearn_first_level_model(task_run, noise_model, floor):
    run, vols, data, motion = task_run
    mask = np.zeros(run.shape, bool)
    mask.ravel()[run.roi_index] = True
    # Real-time MindEye's model: motion confounds from the first volume.
    glm = IncrementalGLM(run.events, data.shape[1], GLMSettings(noise_model=noise_model, motion_min_frames=0))
    r = []
    for t in range(len(data)):
        glm.add(t, data[t], motion[t])
        for j in glm.ready():
            est = glm.estimate(j)
            if j % 5 == 0:  # nilearn is slow: compare every fifth trial, early and late in the run
                ref = _nilearn_beta(run, vols, mask, motion, j, est.n_frames, noise_model)
                r.append(np.corrcoef(ref, est.beta)[0, 1])
    assert len(r) == 13 and len(glm.done) == 63
    assert np.median(r) >= floor, r


def test_running_products_equal_the_direct_fit(task_run):
    _, _, data, motion = task_run
    run = task_run[0]
    glm = IncrementalGLM(run.events, data.shape[1], GLMSettings(noise_model="ar1"))
    for t in range(150):
        glm.add(t, data[t], motion[t])
    fast = glm.estimate(20)
    X = fast.design
    direct, _ = ar1_beta(X, data[:150])
    np.testing.assert_allclose(fast.beta, direct, rtol=1e-3, atol=1e-3 * np.abs(direct).max())


def test_motion_confounds_join_the_fit_once_it_has_enough_volumes(task_run):
    run, _, data, motion = task_run
    glm = IncrementalGLM(run.events, data.shape[1], GLMSettings(noise_model="ar1", motion_min_frames=40))
    widths = {}
    for t in range(60):
        glm.add(t, data[t], motion[t])
        if t in (38, 39):  # 39 volumes, then 40
            est = glm.estimate(2)
            direct, _ = ar1_beta(est.design, data[:t + 1])
            np.testing.assert_allclose(est.beta, direct, rtol=1e-3, atol=1e-3 * np.abs(direct).max())
            widths[t + 1] = est.design.shape[1]
            # the motion parameters are (or are not) columns of the design
            has_motion = any(np.allclose(est.design[:, c], motion[:t + 1, 0]) for c in range(est.design.shape[1]))
            assert has_motion == (t + 1 >= 40)
    assert widths[40] == widths[39] + 6


def test_a_missing_volume_drops_its_row_and_keeps_the_time_axis(task_run):
    from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

    run, _, data, motion = task_run
    missing = {40, 41, 97}
    for model in ("ols", "ar1"):
        glm = IncrementalGLM(run.events, data.shape[1], GLMSettings(noise_model=model))
        for t in range(len(data)):
            glm.add_missing(t) if t in missing else glm.add(t, data[t], motion[t])
        est = glm.estimate(30, version="endofrun")
        rows = np.array([t not in missing for t in range(len(data))])
        assert est.n_frames == 192 and est.n_used == 189
        kinds = ["probe" if k == 30 else "reference" for k in range(63)]
        events = pd.DataFrame({"onset": run.events.onset, "duration": run.events.duration, "trial_type": kinds})
        design = make_first_level_design_matrix(frame_times(192, 1.5), events, hrf_model="glover", drift_model="cosine",
                                                high_pass=0.01, add_regs=motion, add_reg_names=[f"m{i}" for i in range(6)])
        labels, results = run_glm(data[rows].astype(float), design.to_numpy()[rows], noise_model=model)
        ref = np.zeros(data.shape[1])
        for label, res in results.items():
            ref[labels == label] = res.theta[list(design.columns).index("probe")]
        assert np.corrcoef(ref, est.beta)[0, 1] > 0.9999


def test_trial_is_ready_once_its_window_has_arrived(task_run):
    run, _, data, motion = task_run
    glm = IncrementalGLM(run.events, data.shape[1], GLMSettings(delay_s=7.5))
    # Trial 0 starts at 4.5 s; 4.5 + 7.5 = 12 s is frame 8, so it needs 9 frames.
    assert glm.ready_frame(0) == 9 and glm.ready_frame(1) == 12
    for t in range(8):
        glm.add(t, data[t], motion[t])
    assert glm.ready() == []
    glm.add(8, data[8], motion[8])
    assert glm.ready() == [0]


@pytest.mark.parametrize("records, message", [
    ([{"onset": 1, "image": "a"}], "missing column(s) duration"),
    ([{"onset": 1, "duration": 3, "image": "a"}, {"onset": "soon", "duration": 3, "image": "b"}],
     "row 2, column onset: expected a number of seconds, got 'soon'"),
    ([{"onset": 1, "duration": 3, "image": "a"}, {"onset": 400, "duration": 3, "image": "b"}],
     "row 2, column onset: 400 s is past the end of the run (288 s)"),
    ([{"onset": 1, "duration": 3, "image": "a"}, {"onset": 2.5, "duration": 3, "image": "b"}],
     "row 2, column onset: trial starts at 2.5 s, before the trial in row 1 ends (4 s)"),
    ([{"onset": 1, "duration": -3, "image": "a"}], "row 1, column duration: expected a finite value >= 0"),
    ([{"onset": 1, "duration": 3, "image": ""}], "row 1, column image: expected an image id"),
])
def test_bad_events_give_one_error_naming_row_and_column(records, message):
    with pytest.raises(EventsError) as err:
        events_from_records(records, source="run-01_events.tsv", run_duration_s=288.0)
    assert message in str(err.value) and str(err.value).startswith("run-01_events.tsv: ")


def test_bad_events_file_is_named(tmp_path):
    path = tmp_path / "ev.tsv"
    path.write_text("onset\tduration\n1\t3\n")
    with pytest.raises(EventsError, match=r"ev\.tsv: missing column\(s\) image"):
        read_events(path)


def test_zscoring_and_repeat_averaging(tmp_path, rng):
    betas = rng.normal(3, 2, (10, 7))
    z = RunningZScore(7)
    for i, b in enumerate(betas):
        seen = betas[: i + 1]
        expected = (b - seen.mean(0)) / (seen.std(0) + 1e-6)  # Real-time MindEye's convention
        np.testing.assert_allclose(z(b), expected, rtol=1e-5, atol=1e-5)
    fixed = FixedZScore(betas.mean(0), betas.std(0))
    fixed.save(tmp_path)
    np.testing.assert_allclose(FixedZScore.load(tmp_path)(betas[3]), fixed(betas[3]), rtol=1e-6)
    with pytest.raises(ValueError, match="3 voxels but the saved z-score statistics have 7"):
        fixed(np.zeros(3))
    avg = RepeatAverager()
    avg("a", betas[0])
    mean, count = avg("a", betas[1])
    assert count == 2
    np.testing.assert_allclose(mean, betas[:2].mean(0), rtol=1e-6)


def _write(volumes, indices, affine, folder):
    import time

    from rtdecode.simulator.dicom_writer import write_mosaic
    from rtdecode.simulator.scanner import format_name

    for t in indices:
        write_mosaic(folder / format_name("001_{run:06d}_{volume:06d}.dcm", 7, t), volumes[t], affine,
                     series_number=7, instance=t + 1)
        time.sleep(0.005)


def _glm_config(tmp_path, small_visit, **glm):
    run = small_visit.run(0)
    mask = np.zeros(run.shape, np.uint8)
    mask.ravel()[run.roi_index] = 1
    nib.save(nib.Nifti1Image(mask, run.affine), tmp_path / "roi.nii")
    return make_config(tmp_path, scanner={"volumes_per_run": 192, "missing_timeout_s": 3.0},
                       preprocess={"mask": str(tmp_path / "roi.nii")},
                       glm={"events": str(tmp_path / "truth" / "series-{series:03d}_events.tsv"), **glm})


@pytest.mark.slow
def test_scanner_side_estimates_stores_and_sends_every_trial_once(tmp_path, small_visit):
    cfg = _glm_config(tmp_path, small_visit)
    run = small_visit.run(0)
    run.save_truth(tmp_path / "truth", "series-007")
    pub = Publisher("tcp://127.0.0.1:0")
    sub = Subscriber(pub.address, topics=["beta"])
    try:
        # First half, then a restart of the scanner side, then the rest: nothing lost, nothing twice.
        volumes = list(run.iter_volumes())
        with SideThread(cfg, n=100, timeout=60, publisher=pub) as st:
            _write(volumes, range(100), run.affine, cfg.scanner.watch_dir)
            st.wait()
        got = drain(sub, 2.0)
        with SideThread(cfg, n=92, timeout=90, publisher=pub) as st:
            _write(volumes, range(100, 192), run.affine, cfg.scanner.watch_dir)
            st.wait(settle=1.0)
        got += drain(sub, 3.0)
    finally:
        sub.close()
        pub.close()
    folder = st.side.folder
    rows, raw, sent = BetaStore(folder, 1, "realtime").load()
    assert sorted(int(r["trial"]) for r in rows) == list(range(63))
    end_rows, end_raw, _ = BetaStore(folder, 1, "endofrun").load()
    assert [int(r["trial"]) for r in end_rows] == list(range(63))
    realtime_msgs = [m for m in got if m.fields["version"] == "realtime"]
    assert sorted(m.fields["trial"] for m in realtime_msgs) == list(range(63))
    assert realtime_msgs[-1].arrays["beta"].shape == (len(run.roi_index),)
    assert abs(float(sent[-1].mean())) < 0.5  # z-scored with the session's running statistics
    # End-of-run betas follow the simulated truth at about the configured reliability (motion blurs a little).
    order = np.argsort([int(r["trial"]) for r in end_rows])
    est, true = end_raw[order], run.betas.T
    est_z, true_z = (est - est.mean(0)) / est.std(0), (true - true.mean(0)) / true.std(0)
    assert np.median((est_z * true_z).mean(0)) > 0.2
    assert (folder.path / "func" / f"{folder.prefix(1)}_events.tsv").is_file()
    # Offline mode over the recorded session gives the end-of-run betas again.
    assert main(["glm", str(folder.path), "--out", str(tmp_path / "offline")]) == 0
    offline = np.load(tmp_path / "offline" / "betas.npy")
    # AR(1) truncates each voxel's rho to 1/100 (as nilearn does): a voxel whose rho sits on a bin edge can
    # land in the neighbouring bin on one of the two paths (float32 rows live, recomputed offline), which
    # moves its beta by a few percent. All but such edge voxels agree to float precision.
    close = np.isclose(offline, end_raw[order], rtol=1e-4, atol=1e-3)
    assert close.mean() > 0.999, f"{(~close).sum()} of {close.size} betas differ"


def test_run_without_events_gives_volumes_only(tmp_path, small_run, caplog):
    cfg = make_config(tmp_path, glm={"events": str(tmp_path / "nowhere" / "run-{run}.tsv")})
    with SideThread(cfg, n=len(small_run.volumes), timeout=30) as st:
        write_run(small_run, cfg.scanner.watch_dir, series=3, speedup=100)
        st.wait()
    assert st.side.processed == len(small_run.volumes)
    assert "no events table at" in caplog.text and "volumes only, no betas" in caplog.text
