"""Ingest at the edges (issue 34): a file cut at any byte is still being written, never set aside; odd
files are named for what they are; UIH grids are read; an XA interoperability export that splits a run
into a series per volume forms one run. Real files are read in place; odd files are written with pydicom."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtdecode.base.config import load_config
from rtdecode.base.errors import IngestError, PartialFileError
from rtdecode.base.session import SessionFolder
from rtdecode.ingest import read_volume
from rtdecode.ingest.slices import assemble, read_slice
from rtdecode.preprocess.rigid import rotation_matrix
from rtdecode.simulator.dicom_writer import write_enhanced, write_mosaic, write_slices

from conftest import SKYRA_RUN, SideThread, config_template, wait_until

RTDECODE = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "rtdecode"
skyra = pytest.mark.skipif(not SKYRA_RUN.is_dir(), reason="../shared/data/siemens-skyra-mosaic-run not present")


def _affine(rotation=(0.1, -0.05, 0.2), zooms=(2.0, 2.5, 3.0)):
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(*rotation) @ np.diag(zooms)
    affine[:3, 3] = [-10, 20, 5]
    return affine


# -- a file cut anywhere is "still being written" ------------------------------------------------------

def _cuts(raw: bytes, pixel_start: int) -> list[int]:
    """Every byte through the first 2 kB (file meta, SOP Class UID at ~390-470) and around the pixel data's
    header, every 61st through the rest of the header (the CSA blocks), every 16001st through the pixel
    data, and the last 8 bytes. (Every one of the 457,034 cuts of 001_000013_000000.dcm was checked once
    outside the suite: all partial.)"""
    return sorted({*range(0, 2048), *range(2048, pixel_start, 61), *range(pixel_start - 16, pixel_start + 16),
                   *range(pixel_start, len(raw), 16001), *range(len(raw) - 8, len(raw))})


@skyra
def test_a_real_file_cut_at_any_byte_is_partial_never_set_aside(tmp_path):
    """On round 3's start a cut inside the SOP Class UID was set aside at once ("a 1.2.840.10008.5. object")
    and a cut at bytes 141-143 crashed with pydicom's BytesLengthException."""
    name = "001_000013_000007.dcm"
    source = SKYRA_RUN / name
    raw = source.read_bytes()
    whole = read_volume(source)
    pixel_start = pydicom.dcmread(source)["PixelData"].file_tell
    path = tmp_path / name
    outcomes: dict[str, list[int]] = {}
    for n in _cuts(raw, pixel_start):
        path.write_bytes(raw[:n])
        try:
            read_volume(path)
            outcome = "read"
        except PartialFileError:
            outcome = "partial"
        except IngestError as exc:
            outcome = f"set aside: {exc.reason}"
        outcomes.setdefault(outcome, []).append(n)
    assert set(outcomes) == {"partial"}, {k: v[:5] for k, v in outcomes.items()}
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_volume(path).data, whole.data)


@skyra
def test_every_file_of_the_real_run_cut_where_the_issue_says_is_partial(tmp_path):
    """The issue's repro: the first 142 or 460 bytes (and every byte 141-143 and 390-470) of each file."""
    path = tmp_path / "cut.dcm"
    for source in sorted(SKYRA_RUN.glob("*.dcm")):
        raw = source.read_bytes()
        for n in [141, 142, 143, *range(390, 471)]:
            path.write_bytes(raw[:n])
            with pytest.raises(PartialFileError):
                read_volume(path)


# -- odd files named for what they are ---------------------------------------------------------------

def _save(ds: Dataset, path: Path, sop_class: str, **kwargs) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta, ds.preamble = meta, b"\x00" * 128
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def test_a_dicomdir_is_named_at_once_not_waited_for(tmp_path):
    """On round 3's start a DICOMDIR was "file cut before pixel data" and waited partial_timeout_s."""
    ds = Dataset()
    ds.FileSetID = "RTD"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence([])
    path = _save(ds, tmp_path / "DICOMDIR", "1.2.840.10008.1.3.10")
    with pytest.raises(IngestError, match=r"not an fMRI volume: a DICOMDIR \(a media directory"):
        read_volume(path)


@pytest.mark.parametrize("sop_class, named", [
    ("1.2.840.10008.5.1.4.1.1.88.11", r"a structured report \(Basic Text SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.7", r"a secondary capture \(a screenshot or report\)"),
    ("1.2.3.4.5", r"an object of SOP class 1\.2\.3\.4\.5, which is not an MR image"),
])
def test_a_report_or_capture_is_named_for_what_it_is(tmp_path, sop_class, named):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, generate_uid(), "SR"
    ds.ContentDate = "20261205"
    path = _save(ds, tmp_path / "report.dcm", sop_class)
    with pytest.raises(IngestError, match=f"not an fMRI volume: {named}"):
        read_volume(path)


def _volume_file(tmp_path: Path, rng: np.random.Generator, writer: Callable[..., object]) -> tuple[Path, Dataset]:
    """A 20 x 24 x 5 volume of the seeded ``rng`` written by ``writer`` to vol.dcm, and its data set read back."""
    path = tmp_path / "vol.dcm"
    writer(path, rng.integers(0, 4000, (20, 24, 5)).astype(np.float32), _affine(), series_number=3, instance=1)
    return path, pydicom.dcmread(path)


def test_a_file_meta_without_transfer_syntax_is_named_not_a_crash(tmp_path, rng):
    """On round 3's start: AttributeError in dicom_pixels.py."""
    path, ds = _volume_file(tmp_path, rng, write_mosaic)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    with pytest.raises(IngestError, match=r"the file meta header has no TransferSyntaxUID \(0002,0010\)"):
        read_volume(path)


def test_a_bare_data_set_without_file_meta_is_named(tmp_path, rng):
    _, ds = _volume_file(tmp_path, rng, write_mosaic)
    bare = tmp_path / "bare.dcm"
    with bare.open("wb") as out:  # the data set alone, as old ACR-NEMA style exports write it
        fp = DicomFileLike(out)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
    with pytest.raises(IngestError, match="a DICOM data set without the file meta header"):
        read_volume(bare)


def test_an_enhanced_mr_object_without_functional_groups_is_named_so(tmp_path, rng):
    """On round 3's start it was called a classic multi-frame image."""
    path, ds = _volume_file(tmp_path, rng, write_enhanced)
    del ds.PerFrameFunctionalGroupsSequence
    del ds.SharedFunctionalGroupsSequence
    ds.save_as(path)
    with pytest.raises(IngestError, match="an Enhanced MR image without its functional groups"):
        read_volume(path)


# -- UIH grids ---------------------------------------------------------------------------------------

def _uih_grid(tmp_path: Path, data: np.ndarray, affine: np.ndarray, positions: bool = True) -> Path:
    """One volume as a UIH grid: the per-slice export's files, tiled ceil(sqrt(n)) across and
    ceil(n / across) down, their positions in the MR VFrame Sequence of the "Image Private Header" block."""
    rows, cols, n = data.shape
    slices = [pydicom.dcmread(p) for p in write_slices(tmp_path / "slices", "s{slice:03d}.dcm", data, affine,
                                                        series_number=5, volume=0)]
    across = int(np.ceil(np.sqrt(n)))
    down = int(np.ceil(n / across))
    grid = np.zeros((down * rows, across * cols), np.uint16)
    for s, sl in enumerate(slices):
        r, c = divmod(s, across)
        grid[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = sl.pixel_array
    where = [sl.ImagePositionPatient for sl in slices]
    ds = slices[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
    ds.Manufacturer = "UIH"
    del ds.ImagePositionPatient  # a grid's own position is no slice's: the reader must use the sequence
    ds.Rows, ds.Columns = grid.shape
    ds.PixelData = grid.tobytes()
    block = ds.private_block(0x0065, "Image Private Header", create=True)
    block.add_new(0x50, "DS", str(n))
    items = []
    for position in where if positions else where[:-1]:
        item = Dataset()
        item.ImagePositionPatient = position
        items.append(item)
    block.add_new(0x51, "SQ", Sequence(items))
    path = tmp_path / "grid.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_uih_grid_is_read_as_its_slices_are(tmp_path, rng):
    """Ten slices on a 4-across, 3-down grid (a Siemens mosaic would be 4 x 4). On round 3's start the
    reader said to set scanner.slices_per_volume, after which every file lacked ImagePositionPatient."""
    data = rng.integers(0, 4000, (20, 24, 10)).astype(np.float32)
    affine = _affine(rotation=(0.3, -0.2, 0.1))
    vol = read_volume(_uih_grid(tmp_path, data, affine))
    slices = assemble([read_slice(p, 10) for p in sorted((tmp_path / "slices").glob("*.dcm"))])
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_array_equal(vol.data, slices.data)
    np.testing.assert_allclose(vol.affine, slices.affine, atol=1e-5)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


def test_a_uih_grid_without_its_slice_positions_is_refused_with_the_true_reason(tmp_path, rng):
    data = rng.integers(0, 4000, (20, 24, 10)).astype(np.float32)
    with pytest.raises(IngestError, match=r"UIH grid image of 10 slices whose MR VFrame Sequence .* gives 9 slice"):
        read_volume(_uih_grid(tmp_path, data, _affine(), positions=False))
    with pytest.raises(IngestError, match="a whole volume in one file .*UIH grid"):
        read_slice(tmp_path / "grid.dcm", 10)


# -- Siemens XA interoperability: a series per volume, one run per acquisition -------------------------

NAME = "{run:04d}{instance:03d}.dcm"  # e.g. 7001001.dcm: series 7001 (acquisition 7, volume 1), slice 1


def test_an_xa_interoperability_export_forms_one_run_per_acquisition(tmp_path, small_run):
    """Two acquisitions (7 and 8) of three volumes, every volume a series of its own (7001, 7002, ...,
    8001, ...) with its own SeriesInstanceUID: two runs of three volumes. On round 3's start each
    volume ended the run before it."""
    n = small_run.volumes[0].shape[2]
    (tmp_path / "watch").mkdir()
    cfg = load_config(config_template([str(RTDECODE)], tmp_path, {
        "session": {"root": str(tmp_path / "sessions"), "bids": False},
        "scanner": {"watch_dir": str(tmp_path / "watch"), "pattern": NAME, "slices_per_volume": n,
                    "volumes_per_run": 3, "missing_timeout_s": 1.0, "quarantine_dir": str(tmp_path / "rejected")},
        "network": {"events_port": 0, "control_port": 0},
    }))
    staging = tmp_path / "staging"
    written = {}
    with SideThread(cfg, n=6, timeout=90) as st:
        for acquisition in (7, 8):
            for t in range(3):
                paths = write_slices(staging / f"{acquisition}-{t}", NAME, small_run.volumes[t], small_run.affine,
                                     series_number=acquisition, volume=t, xa_split=True)
                written[(acquisition, t)] = paths
                for p in paths:
                    p.replace(cfg.scanner.watch_dir / p.name)
        st.wait()
    assert st.error is None
    uids = {str(pydicom.dcmread(cfg.scanner.watch_dir / written[(7, t)][0].name).SeriesInstanceUID) for t in range(3)}
    assert len(uids) == 3  # the export's own series: one per volume
    assert st.indices == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    folder = SessionFolder(cfg.session.root, "01", "01")
    runs = folder.runs()
    assert [(r["run"], r["series"]) for r in runs] == [("1", "7001"), ("2", "8001")]
    assert runs[0]["series_uid"] != runs[1]["series_uid"] and runs[0]["series_uid"] not in uids
    assert folder.rejected() == []
    stored = read_volume(next(folder.path.glob("func/*_run-02_bold")) / "vol-000002.nii")
    assert np.allclose(stored.data, np.clip(np.rint(small_run.volumes[2]), 0, 4095))

    # The next participant starts on the same watch folder: every split file of 01's acquisitions is set
    # aside by the guard against another session's series (it sees the acquisition, as runs.tsv holds it).
    cfg2 = load_config(config_template([str(RTDECODE)], tmp_path, {
        "session": {"root": str(tmp_path / "sessions"), "subject": "02", "bids": False},
        "scanner": {"watch_dir": str(tmp_path / "watch"), "pattern": NAME, "slices_per_volume": n,
                    "volumes_per_run": 3, "missing_timeout_s": 1.0, "quarantine_dir": str(tmp_path / "rejected")},
        "network": {"events_port": 0, "control_port": 0},
    }))
    folder2 = SessionFolder(cfg2.session.root, "02", "01")
    with SideThread(cfg2, n=1, timeout=90) as st2:
        assert wait_until(lambda: folder2.path.is_dir() and len(folder2.rejected()) == 6 * n, 60)
    assert st2.events == [] and folder2.runs() == []
    reasons = {r["reason"] for r in folder2.rejected()}
    assert all("was recorded by another session (sub-01 ses-01, run " in r for r in reasons), reasons


def _xa_setup(tmp_path: Path, small_run, volumes_per_run: int):
    """An XA split export's slices, a watch folder and the template's config with a short missing-file wait and
    a long partial-file wait (a file may stay half written): (slices per volume, watch folder, config)."""
    n = small_run.volumes[0].shape[2]
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = load_config(config_template([str(RTDECODE)], tmp_path, {
        "session": {"root": str(tmp_path / "sessions"), "bids": False},
        "scanner": {"watch_dir": str(watch), "pattern": NAME, "slices_per_volume": n, "volumes_per_run": volumes_per_run,
                    "missing_timeout_s": 0.5, "partial_timeout_s": 60.0, "quarantine_dir": str(tmp_path / "rejected")},
        "network": {"events_port": 0, "control_port": 0},
    }))
    return n, watch, cfg


def test_a_split_volume_still_being_written_keeps_its_run_open_for_it(tmp_path, small_run):
    """Acquisition 7's last volume (series 7003) has one slice still being written while acquisition 8's
    first volume (series 8001) lies whole in the folder, longer than ``missing_timeout_s`` after run 1's
    last file. The still-partial file is the open run's, under a series number of its own: the next
    acquisition waits for it. On round 4's start run 1 ended early ("new series") and volume 2's slices
    were set aside as "incomplete when run 1 ended"."""
    n, watch, cfg = _xa_setup(tmp_path, small_run, volumes_per_run=3)

    def volume(acquisition: int, t: int, order=None) -> list[Path]:
        return write_slices(tmp_path / "staging" / f"{acquisition}-{t}", NAME, small_run.volumes[t], small_run.affine,
                            series_number=acquisition, volume=t, xa_split=True, order=order)

    with SideThread(cfg, n=6, timeout=120) as st:
        for t in range(2):
            for p in volume(7, t):
                p.replace(watch / p.name)
        assert wait_until(lambda: len(st.events) == 2, 60)
        last = volume(7, 2)
        raw = last[-1].read_bytes()
        (watch / last[-1].name).write_bytes(raw[: len(raw) // 2])  # the scanner is still writing it
        for p in last[:-1] + volume(8, 0):
            p.replace(watch / p.name)
        def taken() -> bool:  # volume 2's whole slices are read; its last one is not
            return (r := st.side.book.get(7001)) is not None and (len(r.slices.get(2, {})) == n - 1 or r.ended)

        assert wait_until(taken, 60)
        time.sleep(4 * cfg.scanner.missing_timeout_s)  # well past missing_timeout_s: run 1 must still wait
        (watch / last[-1].name).write_bytes(raw)
        for t in (1, 2):
            for p in volume(8, t):
                p.replace(watch / p.name)
        st.wait()
    assert st.error is None
    folder = SessionFolder(cfg.session.root, "01", "01")
    assert folder.rejected() == []
    assert st.indices == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert [(r["run"], r["series"]) for r in folder.runs()] == [("1", "7001"), ("2", "8001")]
    assert folder.run_ends()[1] == "complete"  # all three volumes, not ended early by acquisition 8


def test_a_split_volume_still_being_written_at_shutdown_keeps_its_run_open(tmp_path, small_run):
    """Shutdown (Ctrl-C) while acquisition 7's third volume (series 7003) has one slice still being
    written, longer than ``missing_timeout_s``: the run is not closed under it; the volume is taken when
    whole, and the run is left open for the next start, as a run whose files are still arriving is. On
    round 4's start the run was closed at shutdown and volume 2's slices were set aside."""
    n, watch, cfg = _xa_setup(tmp_path, small_run, volumes_per_run=5)
    staging = tmp_path / "staging"
    with SideThread(cfg, n=10, timeout=120) as st:
        for t in range(2):
            for p in write_slices(staging / str(t), NAME, small_run.volumes[t], small_run.affine, series_number=7,
                                  volume=t, xa_split=True):
                p.replace(watch / p.name)
        assert wait_until(lambda: len(st.events) == 2, 60)
        last = write_slices(staging / "2", NAME, small_run.volumes[2], small_run.affine, series_number=7, volume=2,
                            xa_split=True)
        raw = last[-1].read_bytes()
        (watch / last[-1].name).write_bytes(raw[: len(raw) // 2])  # the scanner is still writing it
        for p in last[:-1]:
            p.replace(watch / p.name)

        def taken() -> bool:  # volume 2's whole slices are read; its last one is not
            return (r := st.side.book.get(7001)) is not None and (len(r.slices.get(2, {})) == n - 1 or r.ended)

        assert wait_until(taken, 60)
        st.side.shutdown()
        time.sleep(4 * cfg.scanner.missing_timeout_s)  # well past missing_timeout_s: the run must still wait
        (watch / last[-1].name).write_bytes(raw)
        st.wait()
    assert st.error is None
    folder = SessionFolder(cfg.session.root, "01", "01")
    assert folder.rejected() == []
    assert st.indices == [(1, 0), (1, 1), (1, 2)]
    assert folder.run_ends() == {}  # left open: the next start resumes it


def test_after_a_restart_a_split_volume_still_being_written_keeps_its_run_open_for_it(tmp_path, small_run):
    """As above, but the scanner side restarts between acquisition 7's second and third volumes (their
    files gone from the folder), and all of the third volume's slices (series 7003) are still being
    written when acquisition 8 lands: the restarted side has read no split file of run 1, so only the
    series numbers say 7003 comes before 8001."""
    n, watch, cfg = _xa_setup(tmp_path, small_run, volumes_per_run=3)

    def volume(acquisition: int, t: int) -> list[Path]:
        return write_slices(tmp_path / "staging" / f"{acquisition}-{t}", NAME, small_run.volumes[t], small_run.affine,
                            series_number=acquisition, volume=t, xa_split=True)

    with SideThread(cfg, n=2, timeout=60) as st:
        for t in range(2):
            for p in volume(7, t):
                p.replace(watch / p.name)
        st.wait()
    assert st.indices == [(1, 0), (1, 1)]
    for p in watch.iterdir():  # stored; moved out of the export folder (as some sites do) while it was down
        p.unlink()
    last = volume(7, 2)
    raws = [p.read_bytes() for p in last]
    with SideThread(cfg, n=4, timeout=120) as st:
        for p, raw in zip(last, raws, strict=True):
            (watch / p.name).write_bytes(raw[: len(raw) // 2])  # every slice of volume 2 still being written
        for p in volume(8, 0):
            p.replace(watch / p.name)
        assert wait_until(lambda: len(st.side.intake.pending) == 2 * n, 60)  # all seen; 8001's files are whole
        time.sleep(4 * cfg.scanner.missing_timeout_s)  # well past missing_timeout_s: run 1 must still wait
        for p, raw in zip(last, raws, strict=True):
            (watch / p.name).write_bytes(raw)
        for t in (1, 2):
            for p in volume(8, t):
                p.replace(watch / p.name)
        st.wait()
    assert st.error is None
    folder = SessionFolder(cfg.session.root, "01", "01")
    assert folder.rejected() == []
    assert st.indices == [(1, 2), (2, 0), (2, 1), (2, 2)]
    assert [(r["run"], r["series"]) for r in folder.runs()] == [("1", "7001"), ("2", "8001")]
    assert folder.run_ends()[1] == "complete"
