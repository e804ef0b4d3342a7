"""The GLM tuning sees training data only, and its HRF choice finds late voxels (issue 32, docs/glm.md)."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.base.events import Events, read_events, write_events
from rtdecode.base.session import SessionFolder
from rtdecode.cli import build_parser, main
from rtdecode.cli.common import tuning_split as _tuning_split
from rtdecode.glm.tuning import GLMTuning

from conftest import record_session

TR = 1.5
# A 2 mm visit of 9 runs and its tuning: about two minutes on an idle 2-core machine, more when others share it.
SLOW = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def small_varied(latent_space):
    """Six runs of a person with varied HRFs on a 4 mm grid (36 images shown 3 times), visual voxels and as
    many that do not respond, as masked series."""
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    spec = SubjectSpec(name="t01", n_voxels=2500, seed=7, latent_dim=32, physiology="varied")
    visit = Visit(spec, n_runs=6, shape=(40, 46, 36), voxel_mm=4.0, seed=11, latent=latent_space)
    runs, mask = [], None
    for r in range(visit.n_runs):
        run = visit.run(r)
        if mask is None:
            mask = _mask(run)[0]
        runs.append((run, run.masked_series(mask, seed=r)))
    return runs


def _mask(run) -> tuple[np.ndarray, np.ndarray]:
    """The visual voxels and as many that do not respond (brain indices), and which of them are visual."""
    roi = np.searchsorted(run.brain_index, run.roi_index)
    others = np.setdiff1d(np.arange(len(run.brain_index)), roi)
    mask = np.sort(np.r_[roi, np.random.default_rng(1).choice(others, len(roi), replace=False)])
    return mask, np.isin(mask, roi)


def _true_peaks(run) -> np.ndarray:
    """Each visual voxel's true HRF peak (s), judged as a library member is (peak_times)."""
    from rtdecode.glm.hrf_library import peak_times

    h = run.hrf
    n = len(run.roi_index)
    return peak_times(np.stack([np.broadcast_to(np.asarray(v, float), (n,)) for v in
                                (h.peak_s, h.undershoot_s, h.dispersion, h.ratio)], 1))



def _shuffle_held_out(folder: SessionFolder, held: set[str], seed: int) -> None:
    """Which held-out image each held-out trial showed, shuffled across the session (onsets kept)."""
    tables = sorted((folder.path / "func").glob("*_events.tsv"))
    events = [read_events(p) for p in tables]
    where = [(k, j) for k, ev in enumerate(events) for j, img in enumerate(ev.image) if img in held]
    labels = [events[k].image[j] for k, j in where]
    shuffled = [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]
    images = [list(ev.image) for ev in events]
    for (k, j), img in zip(where, shuffled, strict=True):
        images[k][j] = img
    for path, ev, imgs in zip(tables, events, images, strict=True):
        write_events(path, Events(ev.onset, ev.duration, tuple(imgs)))


@SLOW
def test_calibrate_leaves_its_held_out_images_out_of_the_glm_tuning(tmp_path, small_varied):
    """What calibrate's tuning sees does not depend on the held-out trials' betas: shuffling which held-out image
    each held-out trial showed (which changes every repeat pair among them) leaves the tuning unchanged; the
    split is calibrate's own (the repeated images by default; runs:N leaves those runs out)."""
    from rtdecode.cli.calibrate import _session_glm

    folder = record_session(tmp_path / "s", small_varied)
    images = [img for run, _ in small_varied for img in run.events.image]
    repeated = sorted({i for i in images if images.count(i) > 1})
    assert len(repeated) >= 20
    runs, held = _tuning_split(folder.path, "t01", None)
    assert runs is None and held == set(repeated)  # as calibration.splits holds out by default
    runs, held = _tuning_split(folder.path, "t01", "runs:2")
    assert runs == [1, 3, 4, 5, 6] and held == set(small_varied[1][0].events.image)
    held = set(repeated[::2])  # half the repeated images: the other half still scores the tuning
    (tmp_path / "held.txt").write_text("\n".join(sorted(held)))
    tunings = []
    for k in range(2):
        if k:
            _shuffle_held_out(folder, held, seed=3)
        args = build_parser().parse_args(["calibrate", "--session", str(folder.path), "--subject", "t01", "--out",
                                          str(tmp_path / f"m{k}"), "--glm-hrf", "library", "--glm-denoise", "auto",
                                          "--holdout", f"@{tmp_path / 'held.txt'}"])
        _session_glm(args)
        tunings.append(GLMTuning.load(tmp_path / f"m{k}"))
    a, b = tunings
    assert not np.array_equal(a.hrf_index, np.full(a.n_voxels, a.hrf_index[0]))  # a real choice was made
    np.testing.assert_allclose(a.reliability, b.reliability, atol=1e-6)
    np.testing.assert_array_equal(a.hrf_index, b.hrf_index)
    np.testing.assert_array_equal(a.pool, b.pool)
    assert (a.n_components, a.fast_components, a.end_components) == (b.n_components, b.fast_components,
                                                                      b.end_components)
    assert a.held_out == len(held) and any("held-out image(s) left out" in n for n in a.notes)
    # Training images still repeat here, but the images' tokens are known: the encoding criterion scores it.
    assert a.criterion == "cross-validated encoding score", a.notes


@SLOW
def test_calibrate_tunes_with_its_default_holdout_by_encoding_and_sees_no_held_out_image(tmp_path, small_varied):
    """calibrate's default held-out images are the repeated ones, so no training image repeats: the encoding
    criterion (ridge from the images' tokens to betas, scored on the other runs) tunes instead of leaving Glover's
    HRF everywhere. Its choice moves towards the true peaks, and shuffling which held-out image each held-out
    trial showed leaves it unchanged (their trials neither train the map nor score it)."""
    from rtdecode.cli.calibrate import _session_glm
    from rtdecode.glm.hrf_library import GLOVER_INDEX, peak_times

    folder = record_session(tmp_path / "s", small_varied)
    _, held = _tuning_split(folder.path, "t01", None)
    tunings = []
    for k in range(2):
        if k:
            _shuffle_held_out(folder, held, seed=5)
        args = build_parser().parse_args(["calibrate", "--session", str(folder.path), "--subject", "t01", "--out",
                                          str(tmp_path / f"m{k}"), "--glm-hrf", "library", "--glm-denoise", "auto"])
        _session_glm(args)
        tunings.append(GLMTuning.load(tmp_path / f"m{k}"))
    a, b = tunings
    assert a.criterion == "cross-validated encoding score" and a.held_out == len(held) >= 20
    assert any("leave one of 6 runs out" in n for n in a.notes), a.notes
    member_peak = peak_times(a.library)
    truth, visual = _true_peaks(small_varied[0][0]), _mask(small_varied[0][0])[1]
    error = np.abs(member_peak[a.hrf_index[visual]] - truth)
    glover = np.abs(member_peak[GLOVER_INDEX] - truth)
    # Measured here: 43 % of visual voxels within 0.5 s of their true peak, Glover's member 0 % (a late person).
    assert (error <= 0.5).mean() >= (glover <= 0.5).mean() + 0.2, ((error <= 0.5).mean(), (glover <= 0.5).mean())
    assert np.median(error) < np.median(glover) - 0.3
    np.testing.assert_allclose(a.reliability, b.reliability, atol=1e-6)
    np.testing.assert_array_equal(a.hrf_index, b.hrf_index)
    np.testing.assert_array_equal(a.pool, b.pool)
    assert (a.n_components, a.fast_components, a.end_components) == (b.n_components, b.fast_components,
                                                                      b.end_components)


def test_glm_tune_takes_runs_and_says_which(tmp_path, small_varied, capsys):
    folder = record_session(tmp_path / "s", small_varied[:4])
    assert main(["glm-tune", str(folder.path), "--out", str(tmp_path / "m"), "--runs", "1,2,4"]) == 0
    assert GLMTuning.load(tmp_path / "m").runs == [1, 2, 4]
    assert main(["glm-tune", str(folder.path), "--out", str(tmp_path / "x"), "--runs", "2,9"]) == 2
    assert "run(s) [9] asked for, but only runs [1, 2, 3, 4]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["glm-tune", "s", "--out", "o", "--runs", "one"])
    assert "expected run numbers from 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def venous_visit(latent_space):
    """A person with varied HRFs, late venous patches and shared slow noise at 2 mm (the HRF field's scale is
    6 mm, the veins' 4 mm): 8 calibration runs (36 images shown 3 times) and a ninth run, as masked series of
    the visual voxels and as many that do not respond, with each mask voxel's grid position, each visual
    voxel's true HRF peak, which are venous, and each run's simulated shared noise."""
    from rtdecode.glm.hrf_library import VoxelGrid, peak_times
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    spec = SubjectSpec(name="v02", n_voxels=1000, seed=9, latent_dim=32, physiology="venous")
    visit = Visit(spec, n_runs=9, seed=4, latent=latent_space)
    runs, out = [], {}
    for r in range(visit.n_runs):
        run = visit.run(r)
        if not out:
            roi = np.searchsorted(run.brain_index, run.roi_index)
            others = np.setdiff1d(np.arange(len(run.brain_index)), roi)
            mask = np.sort(np.r_[roi, np.random.default_rng(2).choice(others, len(roi), replace=False)])
            h = run.hrf
            out = {"visual": np.isin(mask, roi), "venous": visit.subject.venous(run.roi_xyz),
                   "grid": VoxelGrid(np.stack(np.unravel_index(run.brain_index[mask], run.shape), 1), (2.0,) * 3),
                   "peaks": peak_times(np.stack([np.broadcast_to(np.asarray(v, float), (len(roi),)) for v in
                                                 (h.peak_s, h.undershoot_s, h.dispersion, h.ratio)], 1))}
        runs.append((run, run.masked_series(mask, seed=r), run.structured_noise(mask)))
    assert out["venous"].any()
    return {"runs": runs, **out}


def _tuning_runs(runs):
    from rtdecode.glm.tuning import TuningRun

    return [TuningRun(run.events.onset, run.events.duration, series, np.zeros((len(series), 6)),
                      np.ones(len(series), bool), tuple(run.events.image)) for run, series, _ in runs]


@pytest.fixture(scope="module")
def venous_tuned(venous_visit):
    from rtdecode.glm.tuning import tune

    return tune(_tuning_runs(venous_visit["runs"][:8]), TR, grid=venous_visit["grid"], max_components=4)


@SLOW
def test_the_hrf_choice_finds_late_and_venous_voxels(venous_visit, venous_tuned):
    """Late voxels (true peak at least 1 s after the person's median; most are venous here): the share whose
    chosen member peaks within 0.5 s of their true peak, against the bound the library allows (each voxel
    given the member whose peak is nearest its true one, measured the same way) and against issue 20's
    choice (shrunk towards the person's curve) on the same evidence, both scored by repeat reliability (no image
    features given). That criterion does not reach the issue's majority; the encoding criterion does (below)."""
    from rtdecode.glm.hrf_library import choose_members, peak_times

    member_peak = peak_times(venous_tuned.library)
    truth, visual = venous_visit["peaks"], venous_visit["visual"]
    late = truth >= np.median(truth) + 1.0
    assert late.sum() >= 20 and (late & venous_visit["venous"]).sum() >= 10

    def within(hrf_index):
        chosen = member_peak[hrf_index[visual]]
        return np.abs(chosen - truth) <= 0.5, np.median(chosen[late] - truth[late])

    ev = venous_tuned.evidence
    new, new_err = within(venous_tuned.hrf_index)
    old, old_err = within(choose_members(ev["a"], ev["b"], ev["all"])[0])
    bound = np.abs(member_peak[np.argmin(np.abs(member_peak[None, :] - truth[:, None]), 1)] - truth) <= 0.5
    report = (f"late: {new[late].mean():.0%} (issue 20's choice {old[late].mean():.0%}, bound {bound[late].mean():.0%}); "
              f"median error {new_err:+.2f} s ({old_err:+.2f} s); all visual {new.mean():.0%} ({old.mean():.0%}); "
              + venous_tuned.notes[0])
    print(report)
    assert bound[late].mean() >= 0.95, report
    # Measured here: 22 % against 9 %, median error -1.03 s against -1.62 s (not the majority the issue asks).
    assert new[late].mean() >= 2 * old[late].mean() and new[late].mean() >= old[late].mean() + 0.1, report
    assert new_err > old_err + 0.3, report
    assert new.mean() >= old.mean() - 0.05, report  # not bought with the other voxels


@SLOW
def test_the_encoding_criterion_finds_most_late_voxels(venous_visit, venous_tuned, tmp_path_factory):
    """Scored by the encoding criterion (the images' tokens predicting each run's betas from the other runs'),
    the HRF choice peaks within 0.5 s of the truth for a majority of late voxels (the issue's goal), well above
    the repeat criterion's choice on the same runs, without losing the other voxels. Held-out images (the
    repeated ones, as calibrate holds out) are left out, as calibrate does."""
    from calibration.build import standin_tokens
    from rtdecode.glm.hrf_library import peak_times
    from rtdecode.glm.tuning import tune

    runs = _tuning_runs(venous_visit["runs"][:8])
    images = [img for run in runs for img in run.images]
    held = {img for img in images if images.count(img) > 1}
    cache = tmp_path_factory.mktemp("tokens")
    tuned = tune(runs, TR, grid=venous_visit["grid"], max_components=0, held_out=held,
                 features=lambda ids: standin_tokens(ids, cache))
    assert tuned.criterion == "cross-validated encoding score"
    member_peak = peak_times(tuned.library)
    truth, visual = venous_visit["peaks"], venous_visit["visual"]
    late = truth >= np.median(truth) + 1.0

    def within(tuning):
        return np.abs(member_peak[tuning.hrf_index[visual]] - truth) <= 0.5

    new, old = within(tuned), within(venous_tuned)
    report = f"late: {new[late].mean():.0%} (repeats {old[late].mean():.0%}); all visual {new.mean():.0%} ({old.mean():.0%})"
    print(report)
    # Measured here: 62 % of late voxels against 22 %; 73 % of all visual voxels against 49 %.
    assert new[late].mean() > 0.5 and new[late].mean() >= old[late].mean() + 0.2, report
    assert new.mean() >= old.mean(), report


@SLOW
def test_the_hours_noise_is_subtracted_from_a_new_run(venous_visit, venous_tuned):
    """The components and loadings learned on the calibration hour take most of the simulated shared noise out
    of the visual voxels of a run the tuning never saw, from its values in the pool voxels alone."""
    sub = venous_tuned.subtraction
    assert sub is not None and venous_tuned.fast_components >= 1
    run, series, shared = venous_visit["runs"][8]
    visual = venous_visit["visual"]
    removed = series - sub.clean(series, sub.max_components)
    detrend = np.c_[np.ones(len(series)), np.linspace(-1, 1, len(series))]
    from rtdecode.glm.hrf_library import residualize

    before = residualize(detrend, shared[:, visual]).var(0)
    after = residualize(detrend, shared[:, visual] - removed[:, visual]).var(0)
    has = before > 1e-9  # voxels whose head-frame noise budget was spent on thermal noise carry none
    assert has.mean() > 0.5  # 65 % here
    assert np.median(after[has] / before[has]) < 0.5, np.median(after[has] / before[has])


@SLOW
def test_subtraction_adds_no_columns_and_equals_the_plain_glm_on_cleaned_volumes(venous_visit, venous_tuned):
    """Subtracting is done to each volume as it arrives: the design is Real-time MindEye's (no noise columns, even
    in a fit of a few frames) and every estimate equals the plain GLM's on the cleaned volumes."""
    from rtdecode.glm.incremental import GLMSettings, IncrementalGLM
    from rtdecode.glm.voxelwise import make_glm

    run, series, _ = venous_visit["runs"][8]
    k = max(venous_tuned.fast_components, 1)
    live = make_glm(run.events, series.shape[1], GLMSettings(denoise=k), len(series), venous_tuned)
    plain = IncrementalGLM(run.events, series.shape[1], GLMSettings(), len(series))
    cleaned = venous_tuned.subtraction.clean(series, k)
    for t in range(60):
        live.add(t, series[t], np.zeros(6))
        plain.add(t, cleaned[t], np.zeros(6))
    for trial, frames in ((2, 12), (9, 60)):
        a, b = live.estimate(trial, frames), plain.estimate(trial, frames)
        assert a.design.shape == b.design.shape
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-4, atol=1e-4)
    assert not np.allclose(cleaned[:60], series[:60])


def test_rtdecode_glm_applies_a_tuning_and_names_its_model(tmp_path, small_varied, capsys):
    """`rtdecode glm --tuning MODEL` estimates with the tuning's HRFs and writes betas.json naming the model;
    without a tuning it is Glover's, and asking for library HRFs without one is refused in one line."""
    import json

    folder = record_session(tmp_path / "s", small_varied[:4])
    assert main(["glm-tune", str(folder.path), "--out", str(tmp_path / "model")]) == 0
    assert main(["glm", str(folder.path), "--out", str(tmp_path / "tuned"), "--tuning", str(tmp_path / "model")]) == 0
    assert main(["glm", str(folder.path), "--out", str(tmp_path / "plain")]) == 0
    tuned, plain = (json.loads((tmp_path / k / "betas.json").read_text())["model"] for k in ("tuned", "plain"))
    assert tuned["hrf"]["kind"] == "library" and tuned["tuning"]["folder"] == str(tmp_path / "model")
    assert tuned["tuning"]["runs"] == [1, 2, 3, 4]
    assert plain["hrf"]["kind"] == "glover" and plain["tuning"] is None
    assert not np.allclose(np.load(tmp_path / "tuned" / "betas.npy"), np.load(tmp_path / "plain" / "betas.npy"))
    capsys.readouterr()
    assert main(["glm", str(folder.path), "--out", str(tmp_path / "x"), "--hrf", "library"]) == 2
    assert "--hrf library and --denoise N need --tuning MODEL" in capsys.readouterr().err


@SLOW
def test_the_demo_tunes_on_its_calibration_runs_without_calibrates_held_out_images(tmp_path, small_varied):
    """The demo's GLM tuning sees what calibrate trains on: the calibration runs only (not a later real-time run
    in the same session) and none of the images calibrate holds out (the repeated ones)."""
    from rtdecode.demo.settings import DemoSettings
    from rtdecode.demo.visit import _tuned_glm

    folder = record_session(tmp_path / "s", small_varied[:4])  # 3 calibration runs, then a "real-time" run
    s = DemoSettings(calibration_runs=3, glm_hrf="library", glm_denoise="auto")
    _, tuning, lines = _tuned_glm(s, folder.path, tmp_path / "model", tmp_path / "cache")
    images = [img for run, _ in small_varied[:3] for img in run.events.image]
    repeated = {img for img in images if images.count(img) > 1}
    assert repeated and tuning.held_out == len(repeated)
    saved = GLMTuning.load(tmp_path / "model")
    assert saved.runs == tuning.runs == [1, 2, 3] and saved.held_out == len(repeated)
    assert saved.criterion == "cross-validated encoding score" and lines["tuning"] == str(tmp_path / "model")


def test_images_without_features_fall_back_to_repeats_or_say_why(small_varied):
    """A recorded session's own image ids have no stand-in tokens: with repeated training images the tuning is
    scored by repeat reliability and says why; without them the features' error is raised, naming the id."""
    from rtdecode.glm.tuning import tune

    runs = [run for run, _ in small_varied[:3]]
    tuning_runs = _tuning_runs([(run, series, None) for run, series in small_varied[:3]])

    def no_tokens(ids):
        raise ValueError(f"not a built-in stimulus id: {ids[0]!r} (expected 'sim-NNNNN')")

    tuned = tune(tuning_runs, TR, max_components=0, features=no_tokens)
    assert tuned.criterion == "repeat reliability"
    assert any(n.startswith("no image features (not a built-in stimulus id") for n in tuned.notes), tuned.notes
    images = [img for run in runs for img in run.events.image]
    with pytest.raises(ValueError, match="not a built-in stimulus id"):
        tune(tuning_runs, TR, max_components=0, features=no_tokens, held_out={i for i in images if images.count(i) > 1})
