import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtdecode.base.errors import IngestError, PartialFileError
from rtdecode.base.naming import compile_pattern, parse_name
from rtdecode.ingest import read_volume
from rtdecode.preprocess.rigid import rotation_matrix
from rtdecode.simulator.dicom_writer import PSEUDONYM, write_enhanced, write_mosaic
from rtdecode.simulator.scanner import format_name


def _nibabel_reading(path):
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(str(path)))
        return wrapper.get_data(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine, type(wrapper).__name__


@pytest.fixture(params=["oblique", "flipped"])
def volume_and_affine(request, rng):
    data = rng.integers(0, 4000, (10, 12, 7)).astype(np.float32)
    zooms = [2.0, 2.5, 3.0] if request.param == "oblique" else [-2.0, 2.5, 3.0]
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(0.1, -0.05, 0.2) @ np.diag(zooms)
    affine[:3, 3] = [-10, 20, 5]
    return data, affine


@pytest.mark.parametrize("writer, wrapper_name", [(write_mosaic, "MosaicWrapper"), (write_enhanced, "MultiframeWrapper")])
def test_dicom_reads_back_like_nibabel(tmp_path, volume_and_affine, writer, wrapper_name):
    data, affine = volume_and_affine
    path = tmp_path / "vol.dcm"
    writer(path, data, affine, series_number=4, instance=1)
    vol = read_volume(path)
    ref_data, ref_affine, name = _nibabel_reading(path)
    assert name == wrapper_name
    assert vol.data.shape == (10, 12, 7)
    np.testing.assert_array_equal(vol.data, ref_data)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)
    # ... and it is what was written: the same voxels at the same places (slice order may differ).
    read_back = nib.as_closest_canonical(nib.Nifti1Image(vol.data, vol.affine))
    written = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    np.testing.assert_array_equal(read_back.get_fdata(), written.get_fdata())
    np.testing.assert_allclose(read_back.affine, written.affine, atol=1e-4)


def test_patient_fields_never_kept(tmp_path, volume_and_affine):
    data, affine = volume_and_affine
    path = tmp_path / "vol.dcm"
    write_mosaic(path, data, affine, series_number=4, instance=1)
    assert pydicom.dcmread(str(path)).PatientName == PSEUDONYM  # the file does carry one
    vol = read_volume(path)
    assert PSEUDONYM not in repr(vol.meta) and "Patient" not in repr(sorted(vol.meta))


def test_truncated_dicom_is_partial(tmp_path, volume_and_affine):
    data, affine = volume_and_affine
    path = tmp_path / "vol.dcm"
    write_mosaic(path, data, affine, series_number=4, instance=1)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) - 500])
    with pytest.raises(PartialFileError, match="pixel data holds"):
        read_volume(path)
    path.write_bytes(payload[:60])
    with pytest.raises(PartialFileError, match="not yet a DICOM"):
        read_volume(path)


def test_junk_and_nan_inputs(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(IngestError, match="not a DICOM file"):
        read_volume(junk)
    bad = np.ones((4, 5, 6), np.float32)
    bad[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(IngestError, match="1 voxels are NaN"):
        read_volume(tmp_path / "nan.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(IngestError, match="expected one 3-D volume"):
        read_volume(tmp_path / "4d.nii")


def test_nifti_volume(tmp_path, rng):
    data = rng.random((4, 5, 6)).astype(np.float32)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    vol = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_array_equal(vol.affine, aff)


def test_file_name_patterns():
    siemens = compile_pattern("001_{run:06d}_{volume:06d}.dcm")
    assert parse_name(siemens, "001_000013_000005.dcm").volume == 5
    assert parse_name(siemens, "001_000013_000005.dcm").run == 13
    assert parse_name(siemens, "truncated_001_000013_000005.dcm.bad") is None
    assert parse_name(siemens, "001_000013_000005.dcm.tmp") is None
    nifti = compile_pattern("*run{run}_vol{volume}.nii.gz")
    assert parse_name(nifti, "sub1_run2_vol17.nii.gz").volume == 17
    assert format_name("001_{run:06d}_{volume:06d}.dcm", 13, 5) == "001_000013_000005.dcm"
    with pytest.raises(ValueError, match="volume"):
        compile_pattern("run{run}.dcm")
    with pytest.raises(ValueError, match="unknown placeholder"):
        compile_pattern("{subject}_{volume}.dcm")
