"""Two sessions of one subject, recorded through the real scanner side with volumes missing at the start,
in the middle and at the end of runs, written as BIDS and read as their users read them: the schema
validator (3.x), nilearn's load_confounds and first_level_from_bids as the docs write them, the
sidecars, and two finalisers at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_scanner_side import PATTERN, _dicom_bytes, _put

from rtdecode.base.session import SessionFolder, derivative_func, read_tsv
from rtdecode.bids import finalize_session
from rtdecode.bids.confounds import DVARS_SCALE, MISSING_FLAG
from rtdecode.bids.lock import DatasetBusy, DatasetLock
from rtdecode.bids.names import bold_path
from rtdecode.simulator.scanner import format_name, simulate_run

from conftest import SMALL_SHAPE, SideThread, make_config

VALIDATOR = Path(sys.executable).with_name("bids-validator-deno")
RTDECODE = Path(sys.executable).with_name("rtdecode")
ONSETS = (0.0, 4.5, 9.0)
IMAGES = ("face-a", "house-b", "tool-c", "face-d", "house-e", "tool-f")  # not built in: copied from the gallery
# (session, run) -> volumes never sent: two at the start, one in the middle and the last two (10, 11)
AUTOMATIC: dict[str, list] = {}  # session -> (image, stim_file) of run 1's events as the scanner side finalised it
NOT_SENT = {("01", 1): {0, 1}, ("01", 2): {5, 10, 11}, ("02", 1): set()}


def _record(root: Path, session: str, runs: dict[int, int], gallery: Path, motion: object) -> SessionFolder:
    tmp = root.parent / f"ses-{session}-work"  # its own watch folder and events
    events = tmp / "events"
    events.mkdir(parents=True)
    for series in runs.values():
        rows = [f"{o:.1f}\t1.0\t{IMAGES[(series + i) % len(IMAGES)]}" for i, o in enumerate(ONSETS)]
        (events / f"series-{series:03d}.tsv").write_text("onset\tduration\timage\n" + "\n".join(rows) + "\n")
    cfg = make_config(tmp, session={"root": str(root), "session": session, "stimuli": str(gallery)},
                      glm={"events": str(events / "series-{series:03d}.tsv")})
    for run, series in runs.items():
        lost = NOT_SENT[(session, run)]
        with SideThread(cfg, n=12 - len(lost), timeout=60) as st:
            for t in range(12):
                if t not in lost:
                    _put(cfg.scanner.watch_dir, format_name(PATTERN, series, t), _dicom_bytes(tmp, motion, t, series=series))
            st.wait(settle=0.2)
        assert st.error is None
    automatic = read_tsv(root / "sub-01" / f"ses-{session}" / "func" / f"sub-01_ses-{session}_task-rt_run-01_events.tsv")
    AUTOMATIC[session] = [(e["image"], e.get("stim_file")) for e in automatic]  # as the scanner side wrote it
    # Run 2 of ses-01 is left open (its last volumes never came): closed as an operator would close it.
    done = subprocess.run([str(RTDECODE), "session", "finalize", str(root / "sub-01" / f"ses-{session}")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return SessionFolder(root, "01", session)


@pytest.fixture(scope="module")
def visit(tmp_path_factory):
    """ses-01 (run 1 lost volumes 0-1, run 2 lost 5 and its last two) and ses-02, each run written as
    BIDS in the background as it ends; the shown images come from a gallery of non-built-in images."""
    tmp = tmp_path_factory.mktemp("visit")
    gallery = tmp / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(5)
    for name in IMAGES:
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(gallery / f"{name}.png")
    motion = simulate_run(12, shape=SMALL_SHAPE, voxel_mm=6.0, max_mm=0.1, max_deg=0.1, seed=11)  # a still head
    first = _record(tmp / "sessions", "01", {1: 7, 2: 8}, gallery, motion)
    second = _record(tmp / "sessions", "02", {1: 9}, gallery, motion)
    return {"ses01": first, "ses02": second, "gallery": gallery, "root": first.root}


def _errors(dataset: Path) -> list[tuple[str, str]]:
    out = subprocess.run([str(VALIDATOR), "--format", "json", str(dataset)], capture_output=True, text=True, timeout=300)
    issues = json.loads(out.stdout)["issues"]["issues"]
    return [(i["code"], i.get("location", "")) for i in issues if i["severity"] == "error"]


@pytest.mark.skipif(not VALIDATOR.exists(), reason="the schema validator is not installed (pip install "
                                                   "bids-validator-deno; make validate-bids installs it)")
def test_the_schema_validator_accepts_the_raw_dataset_and_the_derivative_as_its_own(visit):
    root = visit["root"]
    assert _errors(root) == []
    assert _errors(root / "derivatives" / "rtdecode") == []


def test_missing_volumes_read_by_nilearn_as_a_user_writes_it(visit):
    from nilearn.glm.first_level import first_level_from_bids
    from nilearn.interfaces.fmriprep import load_confounds

    folder = visit["ses01"]
    deriv = derivative_func(folder)
    for run, lost in ((1, [0, 1]), (2, [5])):
        img = deriv / f"{folder.prefix(run)}_space-boldref_desc-preproc_bold.nii.gz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # std_dvars of 12-volume simulated runs is 1.3 to 4: above nilearn's default 1.5, which would
            # scrub every volume; FD keeps its default (0.5 mm)
            confounds, sample_mask = load_confounds(str(img), strategy=("motion", "scrub"), std_dvars_threshold=5)
        assert len(confounds) == 12 - 2 * (run == 2) and not confounds.isna().any().any(), run
        assert len(sample_mask) >= 5 and not set(lost) & set(sample_mask.tolist()), (run, sample_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, imgs, events, confounds = first_level_from_bids(
            str(folder.root), "rt", space_label="boldref", derivatives_folder="derivatives/rtdecode", sub_labels=["01"],
            img_filters=[("ses", "01")])
        model = models[0].fit(imgs[0], events[0], confounds[0])
    designs = model.design_matrices_
    assert [d.motion_outlier_00.tolist() for d in designs[:1]] == [[int(i == 0) for i in range(12)]]
    assert designs[1].motion_outlier_00.tolist() == [int(i == 5) for i in range(10)]  # the run's last two never came


def test_the_sidecars_say_what_happened_and_how(visit):
    folder, root = visit["ses01"], visit["root"]
    side = {run: json.loads(bold_path(folder, run).with_name(bold_path(folder, run).name.replace(".nii.gz", ".json"))
                            .read_text()) for run in (1, 2)}
    assert side[1]["MissingVolumes"] == [0, 1] and side[2]["MissingVolumes"] == [5]
    assert side[2]["VolumesNotReceivedAtEnd"] == [10, 11] and side[2]["VolumesExpected"] == 12
    assert side[2]["RunEnd"] == "closed by session finalize"
    assert "VolumesNotReceivedAtEnd" not in side[1] and side[1]["RunEnd"] == "complete"
    assert side[1]["ManufacturersModelName"] and "ManufacturerModelName" not in side[1]
    assert nib.load(bold_path(folder, 2)).get_data_dtype() == np.int16  # a filled volume keeps the run int16
    assert AUTOMATIC["01"] and all(f == f"{i}.png" for i, f in AUTOMATIC["01"])  # [session] stimuli, at run end
    events = pd.read_csv(folder.path / "func" / f"{folder.prefix(2)}_events.tsv", sep="\t")
    assert events.stim_file.tolist() == [f"{i}.png" for i in events.image]
    assert all((root / "stimuli" / f).read_bytes() == (visit["gallery"] / f).read_bytes() for f in events.stim_file)
    deriv = derivative_func(folder)
    base = f"{folder.prefix(2)}_space-boldref"
    mask_side = json.loads((deriv / f"{base}_desc-brain_mask.json").read_text())
    assert mask_side["Type"] == "Brain"
    reference = root / "derivatives" / "rtdecode" / mask_side["SpatialReference"].removeprefix("bids::")
    session_ref = nib.load(folder.derivatives / "sub-01_ses-01_task-rt_boldref.nii")
    np.testing.assert_allclose(np.asarray(nib.load(reference).dataobj), np.asarray(session_ref.dataobj))
    for version in ("realtime", "endofrun"):
        model = json.loads((deriv / f"{base}_desc-{version}_betas.json").read_text())["Model"]
        assert model["source"] == f"{folder.prefix(2)}_desc-{version}_betas.json"  # the GLM's own record
        assert model["hrf"]["kind"] == "glover" and model["noise_model"] == "ar1" and model["motion_confounds"] is True
    # dvars on fMRIPrep's scale: the live record's RMS difference times 1000 over the masked series' median
    rows, vectors = folder.run_store(2).load()
    live = {int(r["volume"]): float(r["dvars"]) for r in rows if r["status"] == "ok"}
    conf = pd.read_csv(deriv / f"{folder.prefix(2)}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")
    np.testing.assert_allclose(conf.dvars[7], live[7] * DVARS_SCALE / np.median(vectors), rtol=1e-5)
    assert conf.framewise_displacement[5] == MISSING_FLAG and conf.std_dvars[5] == MISSING_FLAG


def test_a_betas_image_without_the_glm_description_names_the_model_of_the_session_config(visit, tmp_path):
    root = tmp_path / "sessions"
    shutil.copytree(visit["root"], root)
    folder = SessionFolder(root, "01", "01")
    info = folder.derivatives / f"{folder.prefix(1)}_desc-endofrun_betas.json"
    kept = json.loads(info.read_text())
    info.write_text(json.dumps({k: v for k, v in kept.items() if k not in ("glm", "model")}))  # an older session
    tuned = folder.derivatives / f"{folder.prefix(1)}_desc-realtime_betas.json"  # settings of per-voxel HRFs only
    settings = {k: v for k, v in json.loads(tuned.read_text()).items() if k != "model"}
    settings["glm"].update(hrf="library", tuning="/models/sub01")
    tuned.write_text(json.dumps(settings))
    assert not isinstance(finalize_session(folder, [1], tr_s=1.5)[1], str)
    side = derivative_func(folder) / f"{folder.prefix(1)}_space-boldref_desc-endofrun_betas.json"
    model = json.loads(side.read_text())["Model"]
    assert model["source"] == "config.toml" and model["hrf"] == {"kind": "glover"} and model["noise_model"] == "ar1"
    assert "note" not in model
    model = json.loads(Path(str(side).replace("endofrun", "realtime")).read_text())["Model"]
    assert model["hrf"]["kind"] == "library" and model["tuning"] == {"folder": "/models/sub01"}
    assert "per-voxel HRFs" in model["note"]


def test_two_finalizers_on_one_dataset_take_turns(visit, tmp_path):
    root = tmp_path / "sessions"
    shutil.copytree(visit["root"], root)
    shutil.rmtree(root / "stimuli")
    shutil.rmtree(root / "derivatives")
    for bold in root.glob("sub-01/ses-*/func/*_bold.nii.gz"):
        bold.unlink()
    # Both sessions showed the same 30 big images: copies that take a while, made side by side in one order.
    gallery, extra = tmp_path / "gallery", [f"extra-{k:02d}" for k in range(24)]
    gallery.mkdir()
    rng = np.random.default_rng(8)
    for name in (*IMAGES, *extra):
        Image.fromarray(rng.integers(0, 255, (1000, 900, 3), dtype=np.uint8)).save(gallery / f"{name}.png", compress_level=0)
    for events in root.glob("sub-01/ses-*/func/*_run-01_events.tsv"):
        header, n = events.read_text().splitlines()[0].split("\t"), len(read_tsv(events))
        with open(events, "a") as fh:
            for k, name in enumerate(extra):
                row = {"onset": f"{60.0 + k:.1f}", "duration": "1.0", "image": name, "trial": str(n + k)}
                fh.write("\t".join(row.get(c, "n/a") for c in header) + "\n")
    procs = [subprocess.Popen([str(RTDECODE), "session", "finalize", str(root / "sub-01" / f"ses-{s}"), "--gallery",
                               str(gallery)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in ("01", "02")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("Traceback" in err for _, err in outs), outs
    assert len(list(root.glob("sub-01/ses-*/func/*_bold.nii.gz"))) == 3
    shown = {e["image"] for f in root.glob("sub-01/ses-*/func/*_events.tsv") for e in read_tsv(f)}
    assert sorted(p.stem for p in (root / "stimuli").iterdir()) == sorted(shown)


def test_a_held_dataset_lock_makes_the_next_finalizer_wait_then_give_up_naming_the_holder(tmp_path):
    with DatasetLock(tmp_path):
        with pytest.raises(DatasetBusy, match=r"pid \d+"):
            with DatasetLock(tmp_path, timeout_s=0.2):
                pass
    with DatasetLock(tmp_path, timeout_s=0.2):  # released: taken at once
        pass


SKYRA = Path("/work/shared/data/siemens-skyra-mosaic-run")


@pytest.mark.skipif(not SKYRA.is_dir(), reason="the real Siemens export is not on this machine")
def test_slice_timing_multiband_and_phase_encoding_of_a_real_skyra_run_reach_the_sidecar(tmp_path):
    import pydicom

    from rtdecode.bids.sidecars import raw_sidecar
    from rtdecode.ingest.reader import read_volume

    path = SKYRA / "001_000013_000000.dcm"
    volume = read_volume(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom says on import that it is experimental
        from nibabel.nicom import csareader

        ds = pydicom.dcmread(path)
        times = csareader.get_csa_header(ds, "image")["tags"]["MosaicRefAcqTimes"]["items"]
    assert volume.data.shape[2] == 27 == len(volume.meta["SliceTiming"])
    np.testing.assert_allclose(volume.meta["SliceTiming"], np.asarray(times) / 1000.0, atol=1e-6)
    assert volume.meta["SliceTiming"][:3] == pytest.approx([0.0, 0.765, 0.0525])  # interleaved, as acquired
    # InPlanePhaseEncodingDirection COL, PhaseEncodingDirectionPositive 1: along array axis 0, positive
    assert volume.meta["PhaseEncodingDirection"] == "i" and volume.meta["MultibandAccelerationFactor"] == 1
    folder = SessionFolder(tmp_path, "01", "01").create()
    store = folder.run_store(1)
    store.save_acquisition(volume.meta, 1.5)
    side = raw_sidecar(folder, 1, 1.5, json.loads(store.acquisition.read_text()), [], 11)
    assert side["SliceTiming"] == volume.meta["SliceTiming"] and side["PhaseEncodingDirection"] == "i"
    assert side["ManufacturersModelName"] == "Skyra" and side["EchoTime"] == pytest.approx(0.028)
    assert max(side["SliceTiming"]) < side["RepetitionTime"]


def test_a_copy_another_finalizer_is_making_is_left_alone(tmp_path):
    from rtdecode.bids.dataset import Stimuli

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(gallery / "face-a.png")
    theirs = tmp_path / "sessions" / "stimuli" / ".face-a.png.tmp"  # mid-copy in another process (the old shared name)
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"half a png")
    assert Stimuli(tmp_path / "sessions", gallery)("face-a") == "face-a.png"
    assert theirs.read_bytes() == b"half a png"
    assert (tmp_path / "sessions" / "stimuli" / "face-a.png").read_bytes() == (gallery / "face-a.png").read_bytes()
