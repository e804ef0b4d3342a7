"""`rtdecode session import`: NIfTI runs, events and confounds from elsewhere go through the same path as a
live session (offline betas, GLM tuning); bad input is refused whole; importing again resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtdecode.base.events import write_events
from rtdecode.base.recorded import session_folder
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.bids.importer import LEDGER, plan_import, session_space, write_import
from rtdecode.bids.inputs import read_run
from rtdecode.cli import main
from rtdecode.glm.incremental import GLMSettings
from rtdecode.glm.offline import offline_betas
from rtdecode.glm.tuning import GLMTuning, session_grid
from rtdecode.simulator.masked import masked_run

RTDECODE = str(Path(sys.executable).with_name("rtdecode"))
SHAPE = (7, 9, 5)  # unequal sides: an axis mix-up changes the voxel order
AFFINE = np.array([[3.0, 0, 0, -10], [0, 3.0, 0, -14], [0, 0, 3.5, -8], [0, 0, 0, 1]])
VOLUMES = 60
TR = 1.5
MISSING = {1: [23]}  # run index -> volumes that never arrived (the sidecar's MissingVolumes)
MASK = np.random.default_rng(5).random(SHAPE) < 0.55


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three seeded runs as masked series with motion (mm, degrees), and their mask on a small grid."""
    runs = [masked_run(int(MASK.sum()), volumes=VOLUMES, seed=10 + r) for r in range(3)]
    return MASK, runs


def write_inputs(where: Path, mask: np.ndarray, runs, tr: float = TR, outside: float = 0.0) -> list[list[str]]:
    """Each run as another lab would hand it over: 4-D NIfTI (+ sidecar), events and fMRIPrep's confounds."""
    where.mkdir(parents=True, exist_ok=True)
    groups = []
    for r, (events, data, motion) in enumerate(runs):
        vol = np.full((*SHAPE, VOLUMES), outside, np.float32)  # outside the mask
        vol[mask] = data.T
        img = nib.Nifti1Image(vol, AFFINE)
        img.header.set_zooms((3.0, 3.0, 3.5, tr))
        img.header.set_xyzt_units("mm", "sec")
        bold = where / f"sub-x_run-{r + 1}_desc-preproc_bold.nii.gz"
        nib.save(img, bold)
        if r in MISSING:
            (where / f"sub-x_run-{r + 1}_desc-preproc_bold.json").write_text(json.dumps({"MissingVolumes": MISSING[r]}))
        ev = where / f"sub-x_run-{r + 1}_events.tsv"
        with open(ev, "w") as fh:  # BIDS column order, the image in 'image', a column rtdecode does not use
            fh.write("onset\tduration\ttrial_type\timage\tresponse_time\n")
            for o, d, im in zip(events.onset, events.duration, events.image, strict=True):
                fh.write(f"{o:.3f}\t{d:.3f}\tstimulus\t{im}\tn/a\n")
        conf = where / f"sub-x_run-{r + 1}_desc-confounds_timeseries.tsv"
        with open(conf, "w") as fh:  # fMRIPrep: rotations in radians, more columns than motion
            fh.write("global_signal\ttrans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tframewise_displacement\n")
            for t, m in enumerate(motion):
                values = np.r_[m[:3], np.deg2rad(m[3:])]
                fh.write("1000\t" + "\t".join(repr(float(v)) for v in values) + f"\t{'n/a' if t == 0 else 0.1}\n")
        groups.append([str(bold), str(ev), str(conf)])
    return groups


def record_live(root: Path, mask: np.ndarray, runs) -> SessionFolder:
    """The same runs as the scanner side stores them: vectors in mask order, motion rows, missing volumes."""
    folder = SessionFolder(root, "01", "01").create()
    for number, (events, data, motion) in enumerate(runs, start=1):
        folder.add_run(number, 10 + number, f"1.2.3.{number}")
        store = folder.run_store(number)
        store.save_reference(np.zeros(SHAPE), AFFINE, mask, AFFINE)
        for t, vector in enumerate(data):
            if t in MISSING.get(number - 1, []):
                store.append_missing(t)
                continue
            store.append(vector, {"volume": t, **dict(zip(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"),
                                                          map(float, motion[t]), strict=True))})
        write_events(folder.path / "func" / f"{folder.prefix(number)}_events.tsv", events)
        folder.log_run_end(number, "complete", VOLUMES)
    return folder


def import_cli(session: Path, groups: list[list[str]], *extra: str) -> subprocess.CompletedProcess:
    argv = [RTDECODE, "session", "import", str(session), *[a for g in groups for a in ("--run", *g)], *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def offline(session: Path, out: Path, *extra: str) -> tuple[np.ndarray, list[str]]:
    done = subprocess.run([RTDECODE, "glm", str(session), "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return np.load(out / "betas.npy"), (out / "trials.tsv").read_text().splitlines()


def test_imported_runs_give_the_betas_and_tuning_of_the_same_runs_recorded_live(tmp_path, recorded):
    mask, runs = recorded
    live = record_live(tmp_path / "live", mask, runs)
    groups = write_inputs(tmp_path / "elsewhere", mask, runs)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    session = tmp_path / "imported" / "sub-01" / "ses-01"
    done = import_cli(session, groups, "--mask", str(tmp_path / "mask.nii.gz"))
    assert done.returncode == 0, done.stderr
    assert "run 2:" in done.stdout and "1 missing" in done.stdout and f"mask: {int(mask.sum())} voxels" in done.stdout
    for version in ("endofrun", "realtime"):
        a, rows_a = offline(live.path, tmp_path / f"live-{version}", "--version", version)
        b, rows_b = offline(session, tmp_path / f"imported-{version}", "--version", version)
        assert rows_a == rows_b and len(rows_a) > 40
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())  # equal here; motion's 6 digits
    # The session's voxel space is the mask, so the tuning pools neighbours as it does on a live session.
    for name, where in (("live", live.path), ("imported", session)):
        done = subprocess.run([RTDECODE, "glm-tune", str(where), "--out", str(tmp_path / f"tune-{name}")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    a, b = GLMTuning.load(tmp_path / "tune-live"), GLMTuning.load(tmp_path / "tune-imported")
    assert a.n_voxels == b.n_voxels == int(mask.sum()) and b.runs == [1, 2, 3]
    assert len(set(a.hrf_index.tolist())) > 3  # a real choice, made alike
    grid = session_grid(session_folder(session), 1, b.n_voxels)  # where each voxel lies, for pooling
    assert grid is not None and grid.voxel_mm == (3.0, 3.0, 3.5)
    np.testing.assert_array_equal(grid.ijk, np.argwhere(mask))
    np.testing.assert_array_equal(a.hrf_index, b.hrf_index)


def test_the_imported_tr_is_kept_and_read_by_glm_glm_tune_and_calibrate(tmp_path, recorded, capsys):
    """Runs at TR 2 s: `rtdecode glm` and `glm-tune` without --tr, and calibrate's GLM (settings left at 1.5 s),
    fit them at 2 s; a --tr that contradicts the record is refused."""
    mask, runs = recorded
    groups = write_inputs(tmp_path / "elsewhere", mask, runs[:2], tr=2.0)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert main(["session", "import", str(session), *[a for g in groups for a in ("--run", *g)],
                 "--mask", str(tmp_path / "mask.nii.gz")]) == 0
    assert "TR is 2 s (kept" in capsys.readouterr().out
    live = record_live(tmp_path / "live", mask, runs[:2])  # recorded without its TR: given by --tr
    assert main(["glm", str(live.path), "--out", str(tmp_path / "live-betas"), "--tr", "2"]) == 0
    assert main(["glm", str(session), "--out", str(tmp_path / "imported-betas")]) == 0
    a, b = np.load(tmp_path / "live-betas" / "betas.npy"), np.load(tmp_path / "imported-betas" / "betas.npy")
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())
    calibrating = offline_betas(session_folder(session), GLMSettings())  # as calibrate --session builds them
    np.testing.assert_array_equal(calibrating.betas, b)
    assert main(["glm", str(session), "--out", str(tmp_path / "x"), "--tr", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--tr 1.5, but" in err and "was recorded at TR 2 s" in err
    # glm-tune (and calibrate's tuning, the same call) tunes the HRFs on the same clock.
    assert main(["glm-tune", str(live.path), "--out", str(tmp_path / "t-live"), "--tr", "2"]) == 0
    assert main(["glm-tune", str(session), "--out", str(tmp_path / "t-imported")]) == 0
    a, b = GLMTuning.load(tmp_path / "t-live"), GLMTuning.load(tmp_path / "t-imported")
    np.testing.assert_allclose(b.reliability, a.reliability, atol=1e-6)
    np.testing.assert_array_equal(b.hrf_index, a.hrf_index)
    assert main(["glm-tune", str(session), "--out", str(tmp_path / "x"), "--tr", "1.5"]) == 2
    assert "was recorded at TR 2 s" in capsys.readouterr().err


def test_other_forms_plain_confounds_stim_file_sidecar_tr_and_no_mask(tmp_path, recorded, capsys):
    """SPM's rp_*.txt-style confounds, images named by stim_file, the TR from the sidecar over a wrong header,
    and no --mask: the same mask and betas as the fMRIPrep-style import with its mask."""
    mask, runs = recorded
    groups = write_inputs(tmp_path / "a", mask, runs[:2])
    other = write_inputs(tmp_path / "b", mask, runs[:2], tr=1.0)  # the header is wrong; the sidecar is right
    for where in ("a", "b"):  # run 1 lost volume 5; here, in the first run, it must not spoil the mask
        (tmp_path / where / "sub-x_run-1_desc-preproc_bold.json").write_text('{"MissingVolumes": [5]}')
    _bold(tmp_path / "b", 1, _volume_5_lost, tr=1.0)  # listed in MissingVolumes: what it holds is no data
    for r, (bold, events, conf) in enumerate(other):
        sidecar = Path(bold.replace(".nii.gz", ".json"))
        sidecar.write_text(json.dumps({**(json.loads(sidecar.read_text()) if sidecar.exists() else {}),
                                       "RepetitionTime": 1.5}))
        rows = Path(conf).read_text().splitlines()[1:]
        Path(conf).with_suffix(".txt").write_text("".join("  ".join(f"{float(c):.10e}" for c in ln.split("\t")[1:7])
                                                          + "\n" for ln in rows))
        lines = Path(events).read_text().splitlines()
        Path(events).write_text("onset\tduration\ttrial_type\tstim_file\n" + "".join(
            f"{ln.split(chr(9))[0]}\t{ln.split(chr(9))[1]}\tstimulus\tstimuli/{ln.split(chr(9))[3]}.png\n"
            for ln in lines[1:]))
        other[r] = [bold, events, str(Path(conf).with_suffix(".txt"))]
    first, second = tmp_path / "s1" / "sub-01" / "ses-01", tmp_path / "s2" / "sub-01" / "ses-01"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    assert main(["session", "import", str(first), *[a for g in groups for a in ("--run", *g)], "--mask",
                 str(tmp_path / "mask.nii.gz")]) == 0
    capsys.readouterr()
    assert main(["session", "import", str(second), *[a for g in other for a in ("--run", *g)],
                 "--image-column", "stim_file"]) == 0
    out = capsys.readouterr().out
    assert "the header says TR 1 s; 1.5 s is used" in out and "intensity mask" in out
    own = np.asarray(nib.load(session_space(session_folder(second)).mask).dataobj) > 0
    np.testing.assert_array_equal(own, mask)  # the voxels holding data (about 1000) and none of the zeros around
    assert main(["glm", str(first), "--out", str(tmp_path / "g1")]) == 0
    assert main(["glm", str(second), "--out", str(tmp_path / "g2")]) == 0
    a, b = np.load(tmp_path / "g1" / "betas.npy"), np.load(tmp_path / "g2" / "betas.npy")
    assert (tmp_path / "g1" / "trials.tsv").read_text() == (tmp_path / "g2" / "trials.tsv").read_text()
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


def test_a_run_imported_into_a_live_session_takes_its_voxel_space(tmp_path, recorded, capsys):
    """Appended to a session the scanner side recorded (its runs' mask; no --mask): the imported run is run 4,
    sampled in the live runs' voxels, and gives the betas its live twin (run 1) gave."""
    mask, runs = recorded
    live = record_live(tmp_path / "live", mask, runs)
    groups = write_inputs(tmp_path / "elsewhere", mask, runs[:1], outside=1000.0)  # bright: no intensity mask
    other = np.zeros(SHAPE, np.uint8)
    other[:4] = 1
    nib.save(nib.Nifti1Image(other, AFFINE), tmp_path / "other.nii.gz")
    assert main(["session", "import", str(live.path), "--run", *groups[0], "--mask", str(tmp_path / "other.nii.gz")]) == 2
    assert f"but the session's voxel space ({live.derivatives / live.prefix(1)}_desc-brain_mask.nii)" in \
        capsys.readouterr().err
    assert main(["session", "import", str(live.path), "--run", *groups[0]]) == 0
    assert "run 4:" in capsys.readouterr().out
    assert main(["glm", str(live.path), "--out", str(tmp_path / "g")]) == 0
    betas = np.load(tmp_path / "g" / "betas.npy")
    runs_of = np.array([int(ln.split("\t")[1]) for ln in (tmp_path / "g" / "trials.tsv").read_text().splitlines()[1:]])
    np.testing.assert_allclose(betas[runs_of == 4], betas[runs_of == 1], rtol=1e-6, atol=1e-6 * np.abs(betas).max())


def _events_row(where: Path, run: int, row: int, column: str, value: str) -> None:
    path = where / f"sub-x_run-{run}_events.tsv"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    cells = lines[row].split("\t")
    cells[header.index(column)] = value
    lines[row] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _confounds(where: Path, run: int, edit) -> None:
    path = where / f"sub-x_run-{run}_desc-confounds_timeseries.tsv"
    path.write_text(edit(path.read_text()))


def _bold(where: Path, run: int, edit, tr: float = TR) -> None:
    path = where / f"sub-x_run-{run}_desc-preproc_bold.nii.gz"
    data = edit(np.asarray(nib.load(path).dataobj))
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((3.0, 3.0, 3.5, tr)[: data.ndim])
    nib.save(img, path)


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the header whole, the volumes cut short


def _volume_5_lost(d: np.ndarray) -> np.ndarray:
    d[..., 5] = np.nan
    return d


def _nan_in_volume_7(d: np.ndarray) -> np.ndarray:
    d[(*np.argwhere(MASK)[17], 7)] = np.nan  # a voxel inside the mask
    return d


BAD = {  # name -> (what is broken, words the one error line must hold)
    "onset past the run's end": (lambda w: _events_row(w, 2, 3, "onset", "95"),
                                 ["run-2_events.tsv: row 3, column onset: 95 s is past the end of the run (90 s)"]),
    "onset not a number": (lambda w: _events_row(w, 1, 2, "onset", "soon"),
                           ["run-1_events.tsv: row 2, column onset: expected a number of seconds, got 'soon'"]),
    "image not an id": (lambda w: _events_row(w, 3, 1, "image", "a/b.png"),
                        ["run-3_events.tsv: row 1, column image: expected at most 128 letters", "'a/b.png'"]),
    "no image column": (lambda w: _events_row(w, 1, 0, "image", "picture"),
                        ["run-1_events.tsv: no column 'image'", "--image-column"]),
    "confounds short": (lambda w: _confounds(w, 2, lambda t: "\n".join(t.splitlines()[:-1]) + "\n"),
                        ["run-2_desc-confounds_timeseries.tsv: 59 rows, expected one per volume of", "(60)"]),
    "confounds without rot_z": (lambda w: _confounds(w, 1, lambda t: t.replace("rot_z", "rot_zz", 1)),
                                ["run-1_desc-confounds_timeseries.tsv: missing column(s) rot_z"]),
    "confounds n/a": (lambda w: _confounds(w, 3, lambda t: "\n".join(
        ln if i != 5 else "\t".join(c if k != 2 else "n/a" for k, c in enumerate(ln.split("\t")))
        for i, ln in enumerate(t.splitlines())) + "\n"),
                      ["run-3_desc-confounds_timeseries.tsv: line 6, column trans_y: expected a finite number, got 'n/a'"]),
    "grid differs": (lambda w: _bold(w, 2, lambda d: d[:, :, :4]),
                     ["run-2_desc-preproc_bold.nii.gz: grid (7, 9, 4), expected (7, 9, 5)"]),
    "TR differs": (lambda w: _bold(w, 3, lambda d: d, tr=2.0),
                   ["run-3_desc-preproc_bold.nii.gz: TR 2 s, expected 1.5 s"]),
    "no TR": (lambda w: _bold(w, 1, lambda d: d, tr=0.0), ["run-1_desc-preproc_bold.nii.gz: no repetition time", "--tr"]),
    "NaN in the mask": (lambda w: _bold(w, 3, _nan_in_volume_7), ["run-3_desc-preproc_bold.nii.gz: volume 7 (0-based)"]),
    "one volume": (lambda w: _bold(w, 2, lambda d: d[..., :1]), ["run-2_desc-preproc_bold.nii.gz: expected a 4-D run"]),
    "run cut short": (lambda w: _cut(w / "sub-x_run-3_desc-preproc_bold.nii.gz"),
                      ["run-3_desc-preproc_bold.nii.gz: its data cannot be read"]),
    "missing volume out of range": (
        lambda w: (w / "sub-x_run-2_desc-preproc_bold.json").write_text('{"MissingVolumes": [60]}'),
        ["run-2_desc-preproc_bold.json: MissingVolumes: expected 0-based volume numbers below 60, got [60]"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_input_is_refused_whole_naming_file_and_field(tmp_path, recorded, capsys, case):
    mask, runs = recorded
    where = tmp_path / "elsewhere"
    groups = write_inputs(where, mask, runs)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    breaks, words = BAD[case]
    breaks(where)
    session = tmp_path / "s" / "sub-01" / "ses-01"
    argv = ["session", "import", str(session), *[a for g in groups for a in ("--run", *g)], "--mask",
            str(tmp_path / "mask.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rtdecode: error: rtdecode session import: ")
    for w in words:
        assert w in err
    assert not session.exists()  # checked whole first: not one run written, not even the folder


def test_a_mask_on_another_grid_is_refused(tmp_path, recorded, capsys):
    mask, runs = recorded
    groups = write_inputs(tmp_path / "elsewhere", mask, runs[:1])
    nib.save(nib.Nifti1Image(mask[:, :8].astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert main(["session", "import", str(session), "--run", *groups[0], "--mask", str(tmp_path / "mask.nii.gz")]) == 2
    assert "mask.nii.gz: grid (7, 8, 5)" in capsys.readouterr().err and not session.exists()


def test_the_import_refuses_finalizes_options_and_a_run_without_events(tmp_path, capsys):
    session = str(tmp_path / "s" / "sub-01" / "ses-01")
    assert main(["session", "import", session, "--run", "a.nii.gz", "a_events.tsv", "--runs", "1"]) == 2
    assert "--runs belong to session finalize" in capsys.readouterr().err
    assert main(["session", "import", session, "--run", "a.nii.gz"]) == 2
    assert "--run takes BOLD EVENTS [CONFOUNDS] (2 or 3 files), got 1" in capsys.readouterr().err
    assert main(["session", "import", session, "--run", str(tmp_path / "a.nii.gz"), "a_events.tsv"]) == 2
    assert "a.nii.gz: no such file (expected a 4-D NIfTI run)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


class Crash(Exception):
    pass


def test_importing_again_resumes_without_duplicating_or_losing_a_run(tmp_path, recorded, capsys):
    mask, runs = recorded
    groups = write_inputs(tmp_path / "elsewhere", mask, runs)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask.nii.gz")
    mask_arg = ["--mask", str(tmp_path / "mask.nii.gz")]
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert main(["session", "import", str(session), "--run", *groups[0], *mask_arg]) == 0
    # The second run's import dies after 10 volumes (a kill, a full disk): its files are half there, uncommitted.
    folder = session_folder(session)
    seen = []

    def crash(name: str) -> None:
        seen.append(name)
        if seen.count("volume") == 10:
            raise Crash

    with pytest.raises(Crash):
        write_import(folder, plan_import(folder, [read_run(Path(g[0]), Path(g[1]), Path(g[2]), None) for g in groups[1:2]],
                                         None), crash)
    assert [r["run"] for r in folder.runs()] == ["1"] and len(read_tsv(folder.path / LEDGER)) == 2
    capsys.readouterr()
    # Importing all three again: run 1 is skipped and named, the interrupted run is written whole, the third is new.
    assert main(["session", "import", str(session), *[a for g in groups for a in ("--run", *g)], *mask_arg]) == 0
    out = capsys.readouterr().out
    assert "imported before as run 1; skipped" in out and "2 run(s) imported" in out
    assert [r["run"] for r in folder.runs()] == ["1", "2", "3"]
    assert main(["session", "import", str(session), *[a for g in groups for a in ("--run", *g)]]) == 0
    assert [r["run"] for r in folder.runs()] == ["1", "2", "3"] and "0 run(s) imported" in capsys.readouterr().out
    # The same run with another events table is refused, naming the run it already is.
    _events_row(tmp_path / "elsewhere", 3, 2, "image", "other-image")
    assert main(["session", "import", str(session), "--run", *groups[2]]) == 2
    assert "imported before as run 3 with another events table" in capsys.readouterr().err
    # What was resumed equals a clean import of the same three runs.
    _events_row(tmp_path / "elsewhere", 3, 2, "image", runs[2][0].image[1])
    clean = tmp_path / "clean" / "sub-01" / "ses-01"
    assert main(["session", "import", str(clean), *[a for g in groups for a in ("--run", *g)], *mask_arg]) == 0
    resumed, whole = (session_folder(p).run_store(2) for p in (session, clean))
    assert resumed.vectors.read_bytes() == whole.vectors.read_bytes()
    assert [r["rot_z"] for r in read_tsv(resumed.confounds)] == [r["rot_z"] for r in read_tsv(whole.confounds)]
    assert len(read_tsv(resumed.confounds)) == VOLUMES
