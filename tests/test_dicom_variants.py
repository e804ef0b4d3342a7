"""DICOM as scanners and toolkits send it: rescale in functional groups, big-endian, compressed
syntaxes (complete and cut short), float pixel data, classic multi-frame, per-slice files and series
that are not fMRI volumes. Each file is written with pydicom and read back through read_volume."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRBigEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from rtdecode.base.errors import IngestError, PartialFileError
from rtdecode.ingest import read_volume
from rtdecode.preprocess.rigid import rotation_matrix
from rtdecode.simulator.dicom_writer import write_enhanced, write_mosaic

SHAPE = (40, 44, 9)  # unequal sides; JPEG 2000 needs 32 pixels or more on each side of a frame


@pytest.fixture
def volume(rng):
    data = rng.integers(0, 4000, SHAPE).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(0.1, -0.05, 0.2) @ np.diag([2.0, 2.5, 3.0])
    affine[:3, 3] = [-10, 20, 5]
    return data, affine


def _nibabel(path):
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(str(path)))
        return wrapper.get_data(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine


def _written(tmp_path, volume, writer, name="vol.dcm"):
    path = tmp_path / name
    writer(path, volume[0], volume[1], series_number=3, instance=1)
    return path


# -- rescale from the functional groups --------------------------------------------------------------

def _transformation(slope: float, intercept: float) -> pydicom.Dataset:
    pvt = pydicom.Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    return pvt


def test_enhanced_rescale_comes_from_the_shared_groups(tmp_path, volume):
    """Siemens XA phase maps and Philips enhanced MR: slope 2, intercept -4096 in the shared groups.
    On round 2's start this read raw stored values (only the top level was looked at)."""
    path = _written(tmp_path, volume, write_enhanced)
    ds = pydicom.dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [_transformation(2, -4096)]
    ds.save_as(path)
    got = read_volume(path)
    assert np.allclose(got.data, volume[0] * 2 - 4096)
    nib_data, nib_affine = _nibabel(path)
    assert np.allclose(got.data, nib_data) and np.allclose(got.affine, nib_affine, atol=1e-4)


def test_enhanced_rescale_per_frame_wins_over_shared_and_top_level(tmp_path, volume):
    """Checked against each frame's stored values and its own slope: nibabel 5 gives every frame one
    scale and pydicom's apply_modality_lut reads the top level only, so neither reads this file right."""
    path = _written(tmp_path, volume, write_enhanced)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "5", "7"  # the top level comes last
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [_transformation(3, 1)]
    own = {2: (0.5, -10.0), 5: (1.5, 20.0)}  # two frames carry their own
    for k, (slope, intercept) in own.items():
        ds.PerFrameFunctionalGroupsSequence[k].PixelValueTransformationSequence = [_transformation(slope, intercept)]
    ds.save_as(path)
    got = read_volume(path)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)  # frames in file order = slice order here
    for k in range(SHAPE[2]):
        slope, intercept = own.get(k, (3.0, 1.0))
        assert np.allclose(got.data[:, :, k], stored[k] * slope + intercept), k
        assert np.allclose(got.data[:, :, k], volume[0][:, :, k] * slope + intercept), k


def test_top_level_rescale_matches_pydicoms_modality_lut(tmp_path, volume):
    from pydicom.pixels import apply_modality_lut

    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-4096"
    ds.save_as(path)
    got = read_volume(path)
    lut = apply_modality_lut(pydicom.dcmread(path).pixel_array, ds)
    assert lut.max() == got.data.max() and lut.min() == got.data.min()
    assert np.allclose(got.data, volume[0] * 2 - 4096)


# -- byte order, float pixels, compression ----------------------------------------------------------

def test_explicit_big_endian_is_read_in_its_byte_order(tmp_path, volume):
    """On round 2's start the values came out byte-swapped, without an error."""
    path = _written(tmp_path, volume, write_mosaic)
    expected = read_volume(path)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    got = read_volume(path)
    assert np.array_equal(got.data, expected.data) and np.allclose(got.affine, expected.affine)


def test_float_pixel_data_is_read(tmp_path, volume):
    """On round 2's start: 'no pixel data (file cut before it)'."""
    path = _written(tmp_path, volume, write_enhanced)
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.float32) / 8 - 100.25
    del ds.PixelData
    for name in ("PixelRepresentation", "BitsStored", "HighBit"):
        delattr(ds, name)
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    got = read_volume(path)
    assert np.allclose(got.data, volume[0] / 8 - 100.25)


COMPRESSED = [RLELossless, JPEG2000Lossless, JPEGLSLossless]


@pytest.mark.parametrize("syntax", COMPRESSED, ids=lambda u: UID(u).name.split()[0])
@pytest.mark.parametrize("writer", [write_mosaic, write_enhanced], ids=["mosaic", "enhanced"])
def test_a_compressed_file_is_read_whole_and_called_partial_only_when_cut(tmp_path, volume, syntax, writer):
    """On round 2's start a complete compressed file was 'still incomplete' (its bytes were compared with
    the uncompressed size), waited partial_timeout_s and was set aside with a false reason."""
    path = _written(tmp_path, volume, writer)
    expected = read_volume(path)
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(path)
    got = read_volume(path)
    assert np.array_equal(got.data, expected.data) and np.allclose(got.affine, expected.affine)
    payload = path.read_bytes()
    for cut in (4, 8, 300, len(payload) // 2):
        path.write_bytes(payload[:-cut])
        with pytest.raises(PartialFileError):
            read_volume(path)


def test_an_unsupported_syntax_is_named_at_once(tmp_path, volume):
    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.201")  # HTJ2K: no decoder installed here
    ds.save_as(path)
    with pytest.raises(IngestError, match="cannot be decoded") as err:
        read_volume(path)
    assert not isinstance(err.value, PartialFileError)


# -- what is not one volume -------------------------------------------------------------------------

def test_classic_multi_frame_is_set_aside_with_its_reason(tmp_path, volume):
    """On round 2's start frame 1 came back and the other frames were dropped without a word."""
    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    frame = ds.pixel_array
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([frame] * 3).tobytes()
    ds.save_as(path)
    with pytest.raises(IngestError, match="classic multi-frame image \\(3 frames"):
        read_volume(path)


def test_one_slice_of_a_per_slice_export_is_named_at_once(tmp_path, volume):
    """On round 2's start a single classic slice came back as a 1-slice 'volume'."""
    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.Rows, ds.Columns = SHAPE[0], SHAPE[1]
    ds.PixelData = volume[0][:, :, 4].astype(np.uint16).tobytes()
    ds.save_as(path)
    with pytest.raises(IngestError, match="one slice of a per-slice export .*slices_per_volume"):
        read_volume(path)


@pytest.mark.parametrize(("change", "named"), [
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"], "SeriesDescription": "localizer"}, "a localiser"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND", "MOSAIC"]}, "a phase image"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "a secondary capture"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "CT Image Storage"),
], ids=["localiser", "phase", "secondary-capture", "ct"])
def test_a_series_that_is_not_fmri_is_set_aside_naming_what_it_is(tmp_path, volume, change, named):
    """On round 2's start each of these was read as a BOLD volume."""
    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    for key, value in change.items():
        setattr(ds, key, value)
    ds.save_as(path)
    with pytest.raises(IngestError, match=named) as err:
        read_volume(path)
    assert not isinstance(err.value, PartialFileError) and "not an fMRI volume" in str(err.value)


def test_a_siemens_protocol_document_without_pixels_is_named_not_waited_for(tmp_path, volume):
    """On round 2's start: 'no pixel data (file cut before it)', a partial file waited for, then quarantined."""
    path = _written(tmp_path, volume, write_mosaic)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.12.2.1107.5.9.1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PHOENIXZIPREPORT"]
    ds.save_as(path)
    with pytest.raises(IngestError, match="Siemens non-image object") as err:
        read_volume(path)
    assert not isinstance(err.value, PartialFileError)


# -- files written by other toolkits (dcmtk, GDCM; shipped inside the pydicom wheel) ------------------

TOOLKIT_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MR_SMALL_VARIANTS = ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
                     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]


@pytest.mark.skipif(not (TOOLKIT_FILES / "MR_small.dcm").exists(), reason="pydicom's bundled test files are absent")
@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_real_toolkit_files_in_every_syntax_read_as_the_uncompressed_original(name):
    """One MR slice saved by other toolkits as RLE, big endian, implicit VR, JPEG 2000 and JPEG-LS."""
    from rtdecode.ingest.slices import read_slice

    reference = read_slice(TOOLKIT_FILES / "MR_small.dcm", n_slices=1)
    got = read_slice(TOOLKIT_FILES / name, n_slices=1)
    assert got.data.shape == (64, 64) and np.array_equal(got.data, reference.data)
    assert np.allclose(got.position, reference.position) and np.allclose(got.iop, reference.iop)


@pytest.mark.skipif(not (TOOLKIT_FILES / "MR_small.dcm").exists(), reason="pydicom's bundled test files are absent")
def test_real_toolkit_files_that_are_not_fmri_or_cut_short_get_their_true_reason(tmp_path):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    with pytest.raises(PartialFileError):
        read_volume(TOOLKIT_FILES / "MR_truncated.dcm")
    for name, named in [("CT_small.dcm", "CT Image Storage"), ("JPEG2000.dcm", "secondary capture"),
                        ("reportsi.dcm", "Basic Text SR"), ("rtdose.dcm", "RT Dose Storage")]:
        with pytest.raises(IngestError, match=named) as err:
            read_volume(TOOLKIT_FILES / name)
        assert not isinstance(err.value, PartialFileError), name
    # JPEG lossless (process 14) cannot be written here; its decoder is installed (docs/scanner-side.md).
    assert get_decoder(JPEGLosslessSV1).is_available
