"""Read one scanner file (one volume) into a :class:`Volume` with a RAS voxel-to-world affine.

DICOM is read in process with pydicom (Siemens mosaic and enhanced multi-frame; pixel decoding,
completeness and the Modality LUT in :mod:`rtdecode.ingest.dicom_pixels`; files that are not a BOLD
volume are named by :mod:`rtdecode.ingest.dicom_kind` and set aside at once); NIfTI with nibabel.
Affines follow nibabel's convention for DICOM (array axis 0 runs down the image rows) converted from
DICOM's LPS patient space to the RAS space of NIfTI, so a mask drawn on a NIfTI image applies as is.

Only an allow-list of acquisition fields is kept in :attr:`Volume.meta`: patient-identifying fields
never leave this module.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.base.errors import IngestError, PartialFileError
from rtdecode.ingest.acquisition import acquisition_fields
from rtdecode.ingest.completeness import NOT_PART10, SHORT, WHOLE, judge
from rtdecode.ingest.dicom_kind import not_a_volume, not_part10
from rtdecode.ingest.dicom_pixels import check_complete, decode_frames, untile
from rtdecode.ingest.geometry import affine as stack_affine
from rtdecode.ingest.geometry import orientation, slice_normal, stack_slices
from rtdecode.ingest.grid import uih_grid
from rtdecode.ingest.xa_split import acquisition_of, is_split

ENHANCED_CLASSES = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")
# Acquisition fields safe to keep and pass on: geometry and timing only, nothing about the person.
SAFE_FIELDS = (
    "SeriesNumber", "AcquisitionNumber", "InstanceNumber", "AcquisitionTime", "RepetitionTime",
    "EchoTime", "FlipAngle", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "MagneticFieldStrength", "SeriesInstanceUID",
)


@dataclass
class Volume:
    """One 3-D volume as the scanner wrote it.

    Attributes:
        data: float32 array (i, j, k) in nibabel's DICOM axis order.
        affine: 4x4 voxel-to-world (RAS, mm).
        series: series identity (SeriesInstanceUID or number) used to tell runs apart.
        meta: allow-listed acquisition fields (no patient data).
        source: the file it came from.
    """

    data: np.ndarray
    affine: np.ndarray
    series: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def read_volume(path: str | Path, fmt: str = "auto") -> Volume:
    """Read a DICOM or NIfTI file holding one volume.

    Raises:
        PartialFileError: the file is shorter than its header announces (possibly still being written).
        IngestError: anything else that makes the file unusable (not 3-D, NaNs, unknown layout).
    """
    path = Path(path)
    if fmt == "auto":
        fmt = "nifti" if path.name.endswith((".nii", ".nii.gz")) else "dicom"
    vol = read_nifti(path) if fmt == "nifti" else read_dicom(path)
    if not np.all(np.isfinite(vol.data)):
        raise IngestError(path, f"{int(np.size(vol.data) - np.isfinite(vol.data).sum())} voxels are NaN or infinite")
    return vol


def read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise
    except (EOFError, OSError, ValueError) as exc:
        # nibabel reports a short data block as EOF or a bad reshape: a half-written file.
        raise PartialFileError(path, f"NIfTI data is incomplete or unreadable ({exc})") from None
    except Exception as exc:  # nibabel raises several ImageFileError subclasses
        raise IngestError(path, f"not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise IngestError(path, f"expected one 3-D volume, got an array of shape {data.shape}")
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), series="", source=str(path))


def read_dicom(path: Path) -> Volume:
    ds, keyword = open_dicom(path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        data, affine = _enhanced(ds, path, keyword)
    elif str(ds.get("SOPClassUID", "")) in ENHANCED_CLASSES:
        raise IngestError(path, "an Enhanced MR image without its functional groups (no PerFrameFunctionalGroupsSequence"
                                "): where its frames lie is not recorded")
    elif int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise IngestError(path, f"a classic multi-frame image ({int(ds.NumberOfFrames)} frames without per-frame "
                                "positions): its slice geometry is not recorded; export mosaics or enhanced MR")
    else:
        data, affine = _classic(ds, path, keyword)
    meta = {**safe_meta(ds), **acquisition_fields(ds)}  # slice timing etc. for the BIDS sidecar
    return Volume(data=data, affine=affine, series=series_of(ds), meta=meta, source=str(path))


def open_dicom(path: Path) -> tuple[Any, str]:
    """The dataset and its pixel element's keyword, once the file is known to be a whole image that
    may be fMRI; PartialFileError when the bytes are not all there, IngestError naming anything else.

    Completeness comes first: no value of a file is looked at before its elements run whole to its end
    (a cut inside the SOP Class UID would otherwise name a class that does not exist)."""
    import pydicom

    raw = path.read_bytes()  # one snapshot: every completeness check below judges these bytes
    verdict, why = judge(raw)
    if verdict == SHORT:
        raise PartialFileError(path, why)
    if verdict == NOT_PART10:
        raise IngestError(path, not_part10(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a missing delimiter is judged by check_complete
            ds = pydicom.dcmread(io.BytesIO(raw))
    except Exception as exc:  # pydicom raises many kinds on odd bytes
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if verdict == WHOLE:
            raise IngestError(path, f"unreadable DICOM although every element is whole ({reason})") from None
        raise PartialFileError(path, f"DICOM header is incomplete ({reason})") from None
    kind = not_a_volume(ds)
    if kind is not None:
        raise IngestError(path, kind)
    if "TransferSyntaxUID" not in ds.file_meta:
        raise IngestError(path, "the file meta header has no TransferSyntaxUID (0002,0010): how the pixel data is "
                                "encoded is not recorded (the exporting program wrote an incomplete header)")
    return ds, check_complete(ds, raw, path)


def series_of(ds: Any) -> str:
    """What tells runs apart: the SeriesInstanceUID, or for a Siemens XA export that splits an acquisition
    into a series per volume, the acquisition's identity (:mod:`rtdecode.ingest.xa_split`)."""
    return acquisition_of(ds) or str(ds.get("SeriesInstanceUID") or ds.get("SeriesNumber") or "")


def safe_meta(ds: Any) -> dict[str, Any]:
    meta = {k: _plain(ds.get(k)) for k in SAFE_FIELDS if k in ds}
    if is_split(ds):
        meta["split_series"] = True  # its own SeriesNumber is one volume's; the run is the acquisition's
    return meta


def _classic(ds: Any, path: Path, keyword: str) -> tuple[np.ndarray, np.ndarray]:
    image_type = [str(t).upper() for t in ds.get("ImageType", [])]
    iop = orientation(ds.get("ImageOrientationPatient"), path)
    ipp = np.array([float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0])])
    pix = [float(v) for v in ds.get("PixelSpacing", [1, 1])]
    slice_spacing = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    if "VFRAME" in image_type:
        return uih_grid(ds, path, keyword, iop, (pix[0], pix[1]), slice_spacing)
    if "MOSAIC" not in image_type:
        raise IngestError(path, "one slice of a per-slice export (MR image without MOSAIC in ImageType): set "
                                "scanner.slices_per_volume to assemble volumes from slice files")
    n_slices, normal = _mosaic_csa(ds, path)
    if normal is None:
        normal = slice_normal(iop)
    tiles = math.ceil(math.sqrt(n_slices))
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows % tiles or cols % tiles:
        raise IngestError(path, f"mosaic of {rows}x{cols} pixels cannot hold {tiles}x{tiles} tiles")
    tr, tc = rows // tiles, cols // tiles
    data = untile(ds, path, keyword, tiles, tiles, n_slices)
    # The mosaic's position is the corner of the whole mosaic; move it to the corner of one tile.
    q = np.column_stack([iop[:, 1], iop[:, 0]]) * np.asarray(pix)
    ipp = ipp + q @ (np.array([rows - tr, cols - tc]) / 2.0)
    return data, stack_affine(iop, (pix[0], pix[1], slice_spacing), normal, ipp)


def _mosaic_csa(ds: Any, path: Path) -> tuple[int, np.ndarray | None]:
    with warnings.catch_warnings():
        # nibabel.nicom warns on import that its DICOM readers are experimental; we use only the
        # CSA parser, and check our geometry against nibabel's in the tests.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader

    n, normal = None, None
    elem = ds.get((0x0029, 0x1010))
    if elem is not None:
        try:
            csa = csareader.read(elem.value)
            n = csareader.get_n_mosaic(csa)
            sn = csareader.get_slice_normal(csa)
            normal = None if sn is None else np.asarray(sn, dtype=float)
        except Exception as exc:  # malformed CSA: fall back to the public tag below
            raise IngestError(path, f"Siemens CSA image header unreadable ({exc})") from None
    if n is None and (0x0019, 0x100A) in ds:
        n = int(ds[0x0019, 0x100A].value)
    if not n:
        raise IngestError(path, "MOSAIC image without NumberOfImagesInMosaic (CSA header or (0019,100A))")
    return int(n), normal


def _enhanced(ds: Any, path: Path, keyword: str) -> tuple[np.ndarray, np.ndarray]:
    frames = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    def group(item: Any, name: str) -> Any:
        for src in (item, shared):
            if src is not None and name in src:
                return src[name].value[0]
        raise IngestError(path, f"enhanced DICOM lacks {name} (per-frame or shared)")

    iop = orientation(group(frames[0], "PlaneOrientationSequence").ImageOrientationPatient, path)
    measures = group(frames[0], "PixelMeasuresSequence")
    pix = [float(v) for v in measures.PixelSpacing]
    ipps = np.array([[float(v) for v in group(f, "PlanePositionSequence").ImagePositionPatient] for f in frames])
    declared = int(ds.get("NumberOfFrames", 1) or 1)
    if declared != len(frames):
        raise IngestError(path, f"NumberOfFrames is {declared} but the per-frame groups describe {len(frames)} frames")
    thickness = float(getattr(measures, "SpacingBetweenSlices", None) or getattr(measures, "SliceThickness", 1.0))
    return stack_slices(decode_frames(ds, path, keyword), iop, (pix[0], pix[1]), ipps, path, thickness)


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (int, float, str)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
