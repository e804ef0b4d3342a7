"""Volumes written one file per slice: read each slice, assemble by position, hand on whole volumes."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

from rtdecode.base.errors import IngestError
from rtdecode.base.session import SessionFolder
from rtdecode.ingest import read_volume
from rtdecode.ingest.slices import assemble, read_slice
from rtdecode.preprocess.rigid import rotation_matrix
from rtdecode.simulator.dicom_writer import write_enhanced, write_mosaic, write_slices

from conftest import SideThread, make_config

NAME = "IM_{run:03d}_{instance:05d}.dcm"


def _affine(rotation=(0.1, -0.05, 0.2), zooms=(2.0, 2.5, 3.0)):
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(*rotation) @ np.diag(zooms)
    affine[:3, 3] = [-10, 20, 5]
    return affine


def _nibabel_of_enhanced(tmp_path, data, affine):
    """nibabel's reading of the same slices as one enhanced file (nibabel does not stack slice files)."""
    import warnings

    from nibabel.nicom import dicomwrappers

    path = tmp_path / "same-as-enhanced.dcm"
    write_enhanced(path, data, affine, series_number=3, instance=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(str(path)))
        return wrapper.get_data(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine


CASES = {  # name: (affine, arrival order of the 9 slices)
    "ascending": (_affine(), list(range(9))),
    "descending": (_affine(zooms=(2.0, 2.5, -3.0)), list(range(9))),
    "interleaved-arrival": (_affine(), [0, 2, 4, 6, 8, 1, 3, 5, 7]),
    "oblique-reversed-arrival": (_affine(rotation=(0.4, 0.3, -0.5)), list(range(8, -1, -1))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_slices_assemble_into_the_volume_nibabel_reads(tmp_path, rng, case):
    affine, order = CASES[case]
    data = rng.integers(0, 4000, (40, 44, 9)).astype(np.float32)
    paths = write_slices(tmp_path, NAME, data, affine, series_number=3, volume=2, order=order)
    pieces = [read_slice(p, n_slices=9) for p in paths]
    assert {p.volume for p in pieces} == {2}
    volume = assemble(pieces)
    nib_data, nib_affine = _nibabel_of_enhanced(tmp_path, data, affine)
    assert np.array_equal(volume.data, nib_data)
    assert np.allclose(volume.affine, nib_affine, atol=1e-4)
    # and the world position of every voxel is where it was written
    ijk = np.array([[0, 0, 0, 1], [39, 43, 8, 1], [5, 30, 4, 1]]).T
    if np.linalg.det(affine[:3, :3]) * np.linalg.det(volume.affine[:3, :3]) > 0:
        assert np.allclose(volume.affine @ ijk, affine @ ijk, atol=1e-3)
        assert np.array_equal(volume.data, data)


@pytest.mark.parametrize(("grouping", "temporal"), [("auto", True), ("auto", False), ("temporal_position", True),
                                                    ("acquisition_number", False), ("instance_number", False)])
def test_a_slice_knows_its_volume_from_its_header(tmp_path, rng, grouping, temporal):
    data = rng.integers(0, 4000, (40, 44, 9)).astype(np.float32)
    paths = write_slices(tmp_path, NAME, data, _affine(), series_number=3, volume=5, temporal_position=temporal)
    assert {read_slice(p, 9, grouping).volume for p in paths} == {5}


def test_a_slice_that_cannot_be_placed_is_named(tmp_path, rng):
    data = rng.integers(0, 4000, (40, 44, 9)).astype(np.float32)
    paths = write_slices(tmp_path, NAME, data, _affine(), series_number=3, volume=0, temporal_position=False)
    with pytest.raises(IngestError, match="without TemporalPositionIdentifier"):
        read_slice(paths[0], 9, "temporal_position")
    pieces = [read_slice(p, 9) for p in paths]
    with pytest.raises(IngestError, match="uneven slice gaps"):
        assemble(pieces[:4] + pieces[5:])  # one missing in the middle
    with pytest.raises(IngestError, match="two slices at one position"):
        assemble(pieces + pieces[:1])
    mosaic = tmp_path / "mosaic.dcm"
    write_mosaic(mosaic, data, _affine(), series_number=3, instance=1)
    with pytest.raises(IngestError, match="expects one slice per file"):
        read_slice(mosaic, 9)


def _slice_config(tmp_path, n_slices):
    return make_config(tmp_path, scanner={"pattern": NAME, "slices_per_volume": n_slices, "missing_timeout_s": 1.0,
                                          "volumes_per_run": 6})


@pytest.mark.slow
def test_the_scanner_side_assembles_a_per_slice_export_and_names_a_volume_whose_slices_stop(tmp_path, small_run):
    """Six volumes of a GE/Philips-style export, slices arriving interleaved; volume 3 loses 4 of its
    slices: it becomes missing after missing_timeout_s, its 21 slices are set aside with the count."""
    cfg = _slice_config(tmp_path, small_run.volumes[0].shape[2])
    n = cfg.scanner.slices_per_volume
    watch, staging = cfg.scanner.watch_dir, tmp_path / "staging"
    interleaved = list(range(0, n, 2)) + list(range(1, n, 2))
    with SideThread(cfg, n=5, timeout=90) as st:
        for t in range(6):
            paths = write_slices(staging / str(t), NAME, small_run.volumes[t], small_run.affine, series_number=7,
                                 volume=t, order=interleaved)
            for p in paths[: n - 4] if t == 3 else paths:
                p.replace(watch / p.name)
            time.sleep(0.05)
        st.wait()
    assert [e.index for e in st.events] == [0, 1, 2, 4, 5]
    folder = SessionFolder(cfg.session.root, "01", "01")
    stored = read_volume(next(folder.path.glob("func/*_run-01_bold")) / "vol-000002.nii")
    assert np.allclose(stored.data, np.clip(np.rint(small_run.volumes[2]), 0, 4095))
    assert np.allclose(stored.affine, small_run.affine, atol=1e-3)
    reasons = [r["reason"] for r in folder.rejected()]
    assert len(reasons) == n - 4
    assert all(f"volume 4 (index 3) declared missing ({n - 4} of {n} slices arrived)" in r for r in reasons)


def test_a_slice_with_a_bad_volume_number_is_named(tmp_path, rng):
    data = rng.integers(0, 4000, (40, 44, 3)).astype(np.float32)
    (path,) = write_slices(tmp_path, NAME, data[:, :, :1], _affine(), series_number=3, volume=0)
    ds = pydicom.dcmread(path)
    ds.TemporalPositionIdentifier = "0"
    ds.save_as(path)
    with pytest.raises(IngestError, match="TemporalPositionIdentifier must be a whole number from 1, got '0'"):
        read_slice(path, 3)
