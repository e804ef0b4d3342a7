"""A recorded session written as BIDS: indexed by pybids, named as the validator wants, read by nilearn,
safe against a crash while finalising, and read back by the offline GLM without the live record."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_scanner_side import PATTERN, _dicom_bytes, _put

from rtdecode.base.recorded import session_folder
from rtdecode.base.session import SessionFolder, derivative_func
from rtdecode.bids import finalize_run, finalize_session
from rtdecode.bids.confounds import MISSING_FLAG
from rtdecode.bids.names import bold_path
from rtdecode.glm.incremental import GLMSettings
from rtdecode.glm.offline import offline_betas
from rtdecode.glm.store import BetaStore
from rtdecode.simulator.scanner import format_name

from conftest import SideThread, make_config

ONSETS = (0.0, 3.0, 6.0)
DROPPED = (2, 5)  # run 2 loses volume 5 on the way: declared missing, filled in the 4-D run, listed


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_run):
    """Two runs through the real scanner side, each finalised as BIDS in the background when it ends."""
    tmp = tmp_path_factory.mktemp("bids")
    events = tmp / "events"
    events.mkdir()
    for series in (7, 8):
        rows = [f"{o:.1f}\t1.0\tsim-{(series * 3 + i) % 12:05d}" for i, o in enumerate(ONSETS)]
        (events / f"series-{series:03d}.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    cfg = make_config(tmp, glm={"events": str(events / "series-{series:03d}.tsv")})
    for run, series in ((1, 7), (2, 8)):
        with SideThread(cfg, n=12 - (run == DROPPED[0]), timeout=60) as st:
            for t in range(12):
                if (run, t) != DROPPED:  # the sequencer declares the dropped one missing after missing_timeout_s
                    _put(cfg.scanner.watch_dir, format_name(PATTERN, series, t), _dicom_bytes(tmp, small_run, t, series=series))
            st.wait(settle=0.2)
        assert st.error is None
    folder = SessionFolder(cfg.session.root, "01", "01")
    return folder


def _bidsignored(rel: str, patterns: list[str]) -> bool:
    """gitignore-style, as the validator reads .bidsignore: a pattern matches the path or a folder above it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.rstrip("/")) for pattern in patterns for prefix in prefixes)


def test_every_finished_run_is_indexed_by_pybids_and_named_as_bids_wants(recorded):
    from bids import BIDSLayout
    from bids_validator import BIDSValidator

    root = recorded.root
    layout = BIDSLayout(str(root), validate=True, derivatives=True)
    assert layout.get_subjects() == ["01"] and layout.get_runs() == [1, 2] and layout.get_tr() == 1.5
    assert len(layout.get(suffix="bold", extension=".nii.gz", scope="raw")) == 2
    assert len(layout.get(suffix="events", extension=".tsv", scope="raw")) == 2
    for what in ({"desc": "preproc", "suffix": "bold"}, {"desc": "brain", "suffix": "mask"},
                 {"desc": "confounds", "suffix": "timeseries"}, {"desc": "endofrun", "suffix": "betas"}):
        assert len(layout.get(scope="derivatives", extension=".nii.gz" if what["suffix"] != "timeseries" else ".tsv",
                              **what)) == 2, what
    # Every file outside .bidsignore (the live record) has a BIDS name.
    patterns = [p.strip() for p in (root / ".bidsignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    validator = BIDSValidator()
    raw = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
           and not p.relative_to(root).as_posix().startswith("derivatives/")]
    kept = [r for r in raw if not _bidsignored(r, patterns)]
    assert {r for r in kept if not validator.is_bids("/" + r)} == set()
    assert any(r.endswith("_bold/vol-000000.nii") for r in raw) and not any("_bold/" in r for r in kept)
    # The sidecar: timing, and the volume that never came, filled and listed.
    side = json.loads(bold_path(recorded, 2).with_name(bold_path(recorded, 2).name.replace(".nii.gz", ".json")).read_text())
    assert side["RepetitionTime"] == 1.5 and side["TaskName"] == "rt" and side["MissingVolumes"] == [DROPPED[1]]
    img = nib.load(bold_path(recorded, 2))
    assert img.shape[-1] == 12 and img.header.get_zooms()[-1] == pytest.approx(1.5)
    frames = np.asarray(img.dataobj)
    assert frames.dtype == np.int16  # DICOM pixels are integers; the filled volume is rounded, not float32
    np.testing.assert_allclose(frames[..., 5], (frames[..., 4].astype(float) + frames[..., 6]) / 2, atol=0.5)
    events = pd.read_csv(recorded.path / "func" / f"{recorded.prefix(1)}_events.tsv", sep="\t")
    assert list(events.columns[:4]) == ["onset", "duration", "trial_type", "stim_file"]
    assert all((root / "stimuli" / f).exists() for f in events.stim_file)
    conf = pd.read_csv(derivative_func(recorded) / f"{recorded.prefix(2)}_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")
    assert len(conf) == 12 and np.isnan(conf.framewise_displacement[0])
    # The volume that never came: a number in every column, flagged for scrubbing and in its own outlier column.
    assert not conf.iloc[1:].isna().any().any() and conf.framewise_displacement[5] == MISSING_FLAG
    assert conf.motion_outlier_00.tolist() == [int(i == DROPPED[1]) for i in range(12)]
    assert conf.trans_x[5] == pytest.approx((conf.trans_x[4] + conf.trans_x[6]) / 2, abs=1e-5)
    assert conf[["rot_x", "rot_y", "rot_z"]].abs().max().max() < 0.1  # radians, as fMRIPrep writes them


def test_nilearn_on_the_finalised_run_reproduces_the_end_of_run_betas(recorded):
    from nilearn.glm.first_level import FirstLevelModel

    deriv = derivative_func(recorded)
    for run in (1, 2):
        base = f"{recorded.prefix(run)}_space-boldref"
        mask = nib.load(deriv / f"{base}_desc-brain_mask.nii.gz")
        bold = nib.load(deriv / f"{base}_desc-preproc_bold.nii.gz")
        events = pd.read_csv(recorded.path / "func" / f"{recorded.prefix(run)}_events.tsv", sep="\t")
        rows, raw, _ = BetaStore(recorded, run, "endofrun").load()
        settings = json.loads((recorded.derivatives / f"{recorded.prefix(run)}_desc-endofrun_betas.json").read_text())["glm"]
        missing = json.loads((deriv / f"{base}_desc-preproc_bold.json").read_text())["MissingVolumes"]
        keep = [i for i in range(bold.shape[-1]) if i not in missing]
        for k, row in enumerate(rows):  # one model per trial: this trial against all others (LSS)
            trial_events = events.assign(trial_type=["probe" if t == int(row["trial"]) else "reference"
                                                     for t in events.trial])[["onset", "duration", "trial_type"]]
            model = FirstLevelModel(t_r=settings["t_r"], slice_time_ref=0, hrf_model=settings["hrf_model"],
                                    drift_model=settings["drift_model"], high_pass=settings["high_pass"],
                                    mask_img=mask, signal_scaling=False, smoothing_fwhm=None,
                                    noise_model=settings["noise_model"], minimize_memory=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(bold, events=trial_events, sample_masks=[np.asarray(keep)])
                effect = model.compute_contrast("probe", output_type="effect_size")
            theirs = np.asarray(effect.dataobj)[np.asarray(mask.dataobj) > 0]
            r = np.corrcoef(theirs, raw[k])[0, 1]
            assert r >= 0.999, (run, row["trial"], r)


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_crash_while_finalising_leaves_the_live_record_and_no_half_file_then_finalising_completes(recorded, tmp_path):
    copy_root = tmp_path / "sessions"
    shutil.copytree(recorded.root, copy_root)
    folder = SessionFolder(copy_root, "01", "01")
    shutil.rmtree(copy_root / "derivatives")
    bold_path(folder, 1).unlink()
    live = _digest(folder.derivatives)

    def crash(name):
        if name == "betas":
            raise KeyboardInterrupt  # killed after every file was staged, before any was renamed

    with pytest.raises(KeyboardInterrupt):
        finalize_run(folder, 1, crash_point=crash)
    assert not bold_path(folder, 1).exists() and not list((copy_root / "derivatives").rglob("*.nii.gz"))
    assert _digest(folder.derivatives) == live
    done = finalize_session(folder, only_missing=True)
    assert set(done) == {1} and not isinstance(done[1], str)  # run 2 was whole already
    assert bold_path(folder, 1).exists() and len(list((copy_root / "derivatives").rglob("*run-01*"))) >= 8
    assert not (copy_root / ".finalize-tmp").exists()


def test_the_offline_glm_reads_a_finalised_session_without_its_live_record(recorded, tmp_path):
    copy_root = tmp_path / "sessions"
    shutil.copytree(recorded.root, copy_root)
    shutil.rmtree(copy_root / "sub-01" / "ses-01" / "derivatives")  # only the BIDS copy is left
    for live in (copy_root / "sub-01" / "ses-01" / "func").glob("*_bold"):
        shutil.rmtree(live)
    settings = GLMSettings()
    from_bids = offline_betas(session_folder(copy_root / "sub-01" / "ses-01"), settings)
    from_live = offline_betas(session_folder(recorded.path), settings)
    assert from_bids.images == from_live.images
    np.testing.assert_allclose(from_bids.betas, from_live.betas, rtol=1e-4, atol=1e-4)
    # What the console rebuilds from: dvars back on the live record's scale (BIDS has fMRIPrep's)
    copied = SessionFolder(copy_root, "01", "01").run_store(1).load()[0]
    live = recorded.run_store(1).load()[0]
    np.testing.assert_allclose([float(r["dvars"]) for r in copied], [float(r["dvars"]) for r in live], rtol=1e-4)


def test_a_run_that_ended_before_a_crash_is_written_as_bids_on_the_next_start(recorded, tmp_path):
    from rtdecode.scanner import ScannerSide

    copy_root = tmp_path / "sessions"
    shutil.copytree(recorded.root, copy_root)
    folder = SessionFolder(copy_root, "01", "01")
    bold_path(folder, 2).unlink()  # killed after run 2 ended, before its BIDS copy was whole
    cfg = make_config(tmp_path, session={"root": str(copy_root)})
    side = ScannerSide(cfg)
    try:
        assert side._finalizer.wait(timeout=60)
    finally:
        side.net.close()
    assert bold_path(folder, 2).exists() and side._finalizer.done == {2: "ok"}  # run 1 was whole: left alone
