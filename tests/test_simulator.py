"""The simulator: stimuli, stand-in tokens, subjects, trial-level betas, volume-level runs and files."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest

from models.standin import StandInEmbedder
from rtdecode.cli import main
from rtdecode.gallery.builtin import KINDS, StimulusSet, index_of
from rtdecode.ingest.reader import read_volume
from rtdecode.preprocess.motion import RigidReference
from rtdecode.simulator.bold import BoldRun
from rtdecode.simulator.paradigm import Paradigm, session_plan
from rtdecode.simulator.scanner import motion_trajectory, write_run
from rtdecode.simulator.subjects import SimulatedSubject, SubjectSpec
from rtdecode.simulator.trials import load_session, simulate_session, write_dataset

from conftest import SKYRA_RUN


def _per_voxel_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


def test_stimulus_set_is_large_distinct_varied_and_reproducible():
    stimuli = StimulusSet()
    assert stimuli.n >= 1000
    sample = np.random.default_rng(0).choice(stimuli.n, 120, replace=False)
    digests = {hashlib.sha256(stimuli.image(int(i)).tobytes()).hexdigest() for i in sample}
    assert len(digests) == len(sample)
    assert {stimuli.kind(int(i)) for i in sample} == set(KINDS)
    again = StimulusSet()
    np.testing.assert_array_equal(stimuli.image(7), again.image(7))
    assert stimuli.image(7).shape == (128, 128, 3) and stimuli.image(7).dtype == np.uint8
    assert index_of(stimuli.ids[42]) == 42
    with pytest.raises(ValueError, match="not a built-in stimulus id"):
        index_of("cat.png")


def test_standin_tokens_invert_to_the_coarse_image_and_retrieve_their_image():
    stimuli = StimulusSet()
    images = stimuli.images(range(30))
    emb = StandInEmbedder()
    tokens = emb.embed(images)
    assert tokens.shape == (30, 16, 64) and tokens.dtype == np.float32
    coarse = emb.invert(tokens, size=16)
    small = images.reshape(30, 16, 8, 16, 8, 3).mean(axis=(2, 4)) / 255
    assert np.corrcoef(coarse.ravel(), small.ravel())[0, 1] > 0.97
    # A noisy copy of each image is nearest (cosine) to its own tokens.
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 12, images.shape), 0, 255).astype(np.uint8)
    a = emb.embed(noisy).reshape(30, -1)
    b = tokens.reshape(30, -1)
    sim = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert (sim.argmax(1) == np.arange(30)).all()


def test_subjects_differ_in_voxels_and_organisation_but_share_the_latent(latent_space):
    a = SimulatedSubject(SubjectSpec(name="a", n_voxels=1500, seed=1, latent_dim=32))
    b = SimulatedSubject(SubjectSpec(name="b", n_voxels=1100, seed=2, latent_dim=32))
    assert (a.n_voxels, b.n_voxels) == (1500, 1100)
    assert not np.array_equal(a.xyz[:1100], b.xyz)
    z = latent_space.of_images(range(200, 380))
    ra, rb = a.responses(z), b.responses(z)
    # The same position responds differently in two people ...
    same_xyz = b.responses(z, a.xyz)
    assert np.median(np.abs(_per_voxel_corr(ra, same_xyz))) < 0.3
    # ... yet both are mostly linear in the shared latent (the specific part is 30 % of the variance):
    # a linear map fitted on 120 images predicts the other 60 with R^2 near 0.7.
    for r in (ra, rb):
        r = r - r[:120].mean(0)
        w = np.linalg.lstsq(z[:120], r[:120], rcond=None)[0]
        r2 = 1 - ((r[120:] - z[120:] @ w) ** 2).sum(0) / ((r[120:] - r[120:].mean(0)) ** 2).sum(0)
        assert 0.5 < np.median(r2) < 0.8, np.median(r2)


def test_trial_level_reliability_matches_the_setting(latent_space):
    z = latent_space.of_images(range(0, 400))
    for reliability in (0.3, 0.6):
        subject = SimulatedSubject(SubjectSpec(n_voxels=800, seed=3, latent_dim=32, reliability=reliability))
        true = subject.responses(z)
        noisy = subject.noisy_betas(true, np.random.default_rng(1))
        assert abs(np.median(_per_voxel_corr(noisy, true)) - reliability) < 0.03


def test_trial_dataset_round_trip(tmp_path, latent_space):
    specs = [SubjectSpec(name="p1", n_voxels=300, seed=1, latent_dim=32),
             SubjectSpec(name="p2", n_voxels=250, seed=2, latent_dim=32)]
    path = write_dataset(tmp_path / "ds", specs, sessions=2, n_runs=2, trials_per_run=20, latent=latent_space)
    betas, images, runs = load_session(path.parent / "sub-p2" / "ses-02")
    assert betas.shape == (40, 250) and len(images) == 40 and set(runs) == {1, 2}
    plan = simulate_session(SimulatedSubject(specs[1]), latent_space, 2, n_runs=2, trials_per_run=20)
    np.testing.assert_array_equal(plan.betas, betas)  # seeded: the same call gives the same data


def test_session_plan_repeats_images_and_keeps_runs_full():
    plan = session_plan(1200, 11, 63, n_repeated=50, seed=4)
    flat = [im for run in plan for im in run]
    assert [len(r) for r in plan] == [63] * 11
    counts = pd.Series(flat).value_counts()
    assert (counts == 3).sum() == 50 and (counts == 1).sum() == 693 - 150
    assert all(len(set(run)) == len(run) for run in plan)


def test_nilearn_glm_recovers_true_betas_at_the_configured_reliability(latent_space):
    from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

    for reliability in (0.3, 0.55):
        spec = SubjectSpec(name="g", n_voxels=3000, seed=6, latent_dim=32, reliability=reliability)
        par = Paradigm()
        images = session_plan(1200, 1, 63, seed=int(reliability * 100))[0]
        latents = latent_space.of_images([index_of(i) for i in images])
        run = BoldRun(SimulatedSubject(spec), par.events(images), latents, shape=(40, 46, 36), voxel_mm=4.0, seed=2)
        data = np.stack(list(run.iter_volumes())).reshape(par.volumes, -1)[:, run.roi_index].astype(float)
        times = np.arange(par.volumes) * par.tr_s
        estimates = []
        for j in range(len(images)):
            kinds = ["reference"] * len(images)
            kinds[j] = "probe"
            events = pd.DataFrame({"onset": run.events.onset, "duration": run.events.duration, "trial_type": kinds})
            design = make_first_level_design_matrix(times, events, hrf_model="glover", drift_model="cosine",
                                                    high_pass=0.01)
            labels, results = run_glm(data, design.to_numpy(), noise_model="ols")
            estimates.append(results[labels[0]].theta[list(design.columns).index("probe")])
        r = _per_voxel_corr(np.array(estimates), run.betas.T)
        assert abs(np.median(r) - np.median(run.reliability)) < 0.05, (reliability, np.median(r))


def test_motion_written_into_dicom_equals_the_saved_truth(tmp_path, latent_space):
    par = Paradigm(volumes=6, trials=1)
    spec = SubjectSpec(name="m", n_voxels=2000, seed=7, latent_dim=32)
    motion = motion_trajectory(6, 1.5, 1.5, np.random.default_rng(8))
    run = BoldRun(SimulatedSubject(spec), par.events(["sim-00001"]), latent_space.of_images([1]), n_volumes=6,
                  shape=(48, 56, 40), voxel_mm=3.0, motion=motion, seed=3)
    run.save_truth(tmp_path / "truth", "series-004")
    report = write_run(run, tmp_path / "watch", series=4, speedup=1000)
    assert len(report.paths) == 6 and len(report.lag_s) == 6
    truth = np.loadtxt(tmp_path / "truth" / "series-004_motion_truth.tsv", skiprows=1)
    vols = [read_volume(p) for p in report.paths]
    ref = RigidReference(vols[0].data, vols[0].affine)
    for t in range(1, 6):
        params = ref.params(ref.register(vols[t].data, vols[t].affine))
        est = np.r_[params[:3], np.rad2deg(params[3:])]
        np.testing.assert_allclose(est, truth[t] - truth[0], atol=0.15)
    np.testing.assert_array_equal(np.load(tmp_path / "truth" / "series-004_truth_roi.npy"), run.roi_index)


def test_runs_are_reproducible_from_their_seed(small_visit):
    a = small_visit.run(1)
    b = small_visit.run(1)
    first_a = [v for _, v in zip(range(3), a.iter_volumes(), strict=False)]
    first_b = [v for _, v in zip(range(3), b.iter_volumes(), strict=False)]
    for x, y in zip(first_a, first_b, strict=True):
        np.testing.assert_array_equal(x, y)
    other = next(small_visit.run(2).iter_volumes())
    assert not np.array_equal(first_a[0], other)


@pytest.mark.skipif(not SKYRA_RUN.is_dir(), reason="../shared/data/siemens-skyra-mosaic-run not present")
def test_simulated_mosaic_carries_the_real_exports_header_fields(tmp_path, small_run):
    from rtdecode.simulator.dicom_writer import write_mosaic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader
    real = pydicom.dcmread(sorted(SKYRA_RUN.glob("001_*.dcm"))[0], stop_before_pixels=True)
    write_mosaic(tmp_path / "sim.dcm", small_run.volumes[0], small_run.affine, series_number=2, instance=1)
    sim = pydicom.dcmread(tmp_path / "sim.dcm", stop_before_pixels=True)
    real_fields = {e.keyword or str(e.tag) for e in real if e.keyword != "SourceImageSequence"}
    sim_fields = {e.keyword or str(e.tag) for e in sim}
    assert real_fields - sim_fields == set()
    needed = {"NumberOfImagesInMosaic", "SliceNormalVector", "MosaicRefAcqTimes", "AcquisitionMatrixText",
              "PhaseEncodingDirectionPositive", "BandwidthPerPixelPhaseEncode", "SlicePosition_PCS", "ICE_Dims",
              "TimeAfterStart", "RepetitionTime", "EchoTime", "SliceMeasurementDuration"}
    assert needed <= set(csareader.get_csa_header(real, "image")["tags"])
    assert needed <= set(csareader.get_csa_header(sim, "image")["tags"])
    assert "MrPhoenixProtocol" in csareader.get_csa_header(sim, "series")["tags"]


def test_simulate_commands(tmp_path, capsys):
    args = ["simulate", "run", "--out", str(tmp_path / "watch"), "--truth", str(tmp_path / "truth"),
            "--stimuli", str(tmp_path / "stim"), "--volumes", "20", "--trials", "4", "--shape", "30x36x26",
            "--voxel-mm", "5", "--speedup", "200", "--run", "2", "--runs", "2"]
    assert main(args) == 0
    assert len(list((tmp_path / "watch").glob("001_000002_*.dcm"))) == 20
    events = pd.read_csv(tmp_path / "truth" / "series-002_events.tsv", sep="\t")
    assert list(events.columns[:3]) == ["onset", "duration", "trial_type"] and "image" in events and len(events) == 4
    assert {f"{i}.png" for i in events.image} <= {p.name for p in (tmp_path / "stim").iterdir()}
    assert main(["simulate", "betas", "--out", str(tmp_path / "betas"), "--subjects", "2", "--runs", "1",
                 "--trials", "10"]) == 0
    assert (tmp_path / "betas" / "sub-sim02" / "ses-01" / "betas.npy").is_file()
    assert main(["simulate", "run", "--out", str(tmp_path / "w2"), "--trials", "99", "--volumes", "20"]) == 2
    assert "after the run (30 s)" in capsys.readouterr().err


def test_the_simulators_own_hrf_and_cosines_agree_with_the_glms_design():
    """Two codes that share nothing (exact gamma CDFs here, nilearn's sampled convolution in the GLM)
    agree within 1 % of the peak, on an unequal TR and unequal trial lengths."""
    from rtdecode.glm.design import cosine_drift, frame_times, trial_regressors
    from rtdecode.simulator.hrf import boxcar_responses, slow_cosines

    rng = np.random.default_rng(3)
    times = frame_times(157, 1.3)
    onsets = np.sort(rng.uniform(2, 180, 23))
    durations = rng.uniform(0.5, 4.0, 23)
    ours, glm = boxcar_responses(onsets, durations, times), trial_regressors(onsets, durations, times, 1.3)
    assert ours.shape == glm.shape == (157, 23)
    assert np.abs(ours - glm).max() < 0.01 * glm.max()
    slow, drift = slow_cosines(157, 1.3, 0.01), cosine_drift(0.01, times)
    assert slow.shape == drift.shape  # the same cut-off: as many cosines
    basis, _ = np.linalg.qr(drift)
    assert np.abs(slow - basis @ (basis.T @ slow)).max() < 1e-9  # and the same span


def test_the_simulators_head_pose_moves_a_point_as_the_session_folder_reports_motion():
    """Rotation about x first, then y, then z, about the grid centre, then the translation."""
    from rtdecode.simulator.head import grid_centre, pose

    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-90, -110, -60]
    centre = grid_centre((40, 46, 36), affine)
    assert np.allclose(centre, affine[:3, :3] @ [19.5, 22.5, 17.5] + affine[:3, 3])
    quarter = np.pi / 2
    point = centre + [10.0, 0.0, 0.0]
    moved = pose([1.0, 2.0, 3.0, 0.0, 0.0, quarter], centre) @ np.append(point, 1)
    assert np.allclose(moved[:3], centre + [0.0, 10.0, 0.0] + [1.0, 2.0, 3.0])  # +x turns to +y about z
    both = pose([0, 0, 0, quarter, 0.0, quarter], centre)[:3, :3]  # x first: y -> z, then z stays z
    assert np.allclose(both @ [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
