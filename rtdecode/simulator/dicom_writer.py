"""Write volumes as a Siemens real-time export does: classic mosaic or enhanced multi-frame DICOM.

The header carries the fields a Siemens real-time export carries (compare a real file with
``pydicom``), including a pseudonymous patient block, so code that reads these files reads a
scanner's. Geometry follows nibabel's convention: ``affine`` is RAS, data axis 0 runs down rows.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtdecode.simulator.csa import encode_csa2

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PSEUDONYM = "SIM0001_pseudonym"


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], float, np.ndarray, np.ndarray]:
    lps = RAS_TO_LPS @ np.asarray(affine, float)
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    col_dir, row_dir, normal = (lps[:3, i] / zooms[i] for i in range(3))
    iop = [*row_dir.tolist(), *col_dir.tolist()]
    return iop, [float(zooms[0]), float(zooms[1])], float(zooms[2]), normal, lps[:3, 3]


def _base(path: Path, sop_class: str, series_number: int, series_uid: str, instance: int, tr_s: float) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    now = time.localtime()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = time.strftime("%Y%m%d", now)
    ds.AcquisitionTime = ds.ContentTime = time.strftime("%H%M%S.000000", now)
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime
    ds.InstitutionAddress = "Simulated Road 1,Nowhere"
    ds.StationName = "RTDSIM01"
    ds.StudyDescription = "rtdecode^simulated"
    ds.PhysiciansOfRecord = ["", ""]
    ds.PatientSize, ds.PatientWeight = "1.75", "70"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanOptions, ds.AngioFlag = "FS", "N"
    ds.NumberOfAverages, ds.ImagingFrequency, ds.ImagedNucleus, ds.EchoNumbers = "1", "123.25", "1H", "1"
    ds.PercentSampling = ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "2232"
    ds.DeviceSerialNumber = "00000"
    ds.TransmitCoilName = "Body"
    ds.VariableFlipAngleFlag, ds.SAR, ds.dBdt = "N", "0.09", "0"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = ds.StudyDate, ds.StudyTime
    ds.PerformedProcedureStepID = "MR" + ds.StudyDate + ds.StudyTime[:6]
    ds.PerformedProcedureStepDescription = ds.StudyDescription
    localizer = pydicom.Dataset()
    localizer.ReferencedSOPClassUID, localizer.ReferencedSOPInstanceUID = MR_IMAGE, "1.2.826.0.1.3680043.8.498.3"
    ds.ReferencedImageSequence = DicomSequence([localizer])
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "MR", "SIEMENS", "Skyra"
    ds.SoftwareVersions = "syngo MR E11 (rtdecode simulator)"
    ds.InstitutionName = "rtdecode simulated site"
    ds.SeriesDescription = ds.ProtocolName = f"func_task-rt_run-{series_number:02d}"
    ds.PatientName, ds.PatientID = PSEUDONYM, PSEUDONYM
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19900101", "O", "035Y"
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "EP", "SK", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = f"{tr_s * 1000:g}", "30", "64"
    ds.MagneticFieldStrength = "3"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.StudyID, ds.SeriesNumber = "1", str(series_number)
    ds.AcquisitionNumber = ds.InstanceNumber = str(instance)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def series_uid_for(series_number: int, seed: int = 0, subject: str = "", session: str = "") -> str:
    """A simulated SeriesInstanceUID: the same on every call, and another for every participant, session
    and series (a real scanner's are unique; the scanner side sets aside a series another session recorded)."""
    digest = hashlib.sha256(f"{subject}\0{session}\0{seed}".encode()).digest()
    return f"1.2.826.0.1.3680043.8.498.{int.from_bytes(digest[:8], 'big') or 1}.{series_number}"


def write_mosaic(path: str | Path, data: np.ndarray, affine: np.ndarray, series_number: int, instance: int,
                 tr_s: float = 1.5, series_uid: str | None = None, subject: str = "", session: str = "") -> None:
    """Write one volume as a classic Siemens mosaic DICOM (uint16 pixels, CSA header)."""
    path = Path(path)
    rows, cols, n = data.shape
    tiles = math.ceil(math.sqrt(n))
    mosaic = np.zeros((tiles * rows, tiles * cols), np.uint16)
    vals = np.clip(np.rint(data), 0, 4095).astype(np.uint16)
    for s in range(n):
        r, c = divmod(s, tiles)
        mosaic[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = vals[:, :, s]
    iop, pix, dz, normal, ipp = _geometry(affine)
    iop_m = np.array(iop).reshape(2, 3).T
    q = np.column_stack([iop_m[:, 1], iop_m[:, 0]]) * np.asarray(pix)
    mosaic_ipp = ipp - q @ (np.array([tiles * rows - rows, tiles * cols - cols]) / 2.0)
    uid = series_uid or series_uid_for(series_number, subject=subject, session=session)
    ds = _base(path, MR_IMAGE, series_number, uid, instance, tr_s)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"]
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{dz:g}"
    ds.AcquisitionMatrix = [rows, 0, 0, cols]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in mosaic_ipp]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.SliceLocation = f"{float(ipp @ normal):.4f}"
    ds.SequenceName = f"*epfid2d1_{cols}"
    ds.NumberOfPhaseEncodingSteps, ds.EchoTrainLength = str(rows), str(rows // 2)
    ds.NumberOfFrames = "1"
    ds.Rows, ds.Columns = mosaic.shape
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(mosaic.min()), int(mosaic.max())
    ds.WindowCenter, ds.WindowWidth = f"{int(mosaic.max()) // 3}", f"{max(int(mosaic.max()) * 2 // 3, 1)}"
    ds.WindowCenterWidthExplanation = "Algo1"
    ds.PixelSpacing = [f"{pix[0]:g}", f"{pix[1]:g}"]
    slice_times = [(i * tr_s * 1000 / n) for i in range(n)]
    csa = encode_csa2({
        "EchoTime": ("DS", [30.0]),
        "RepetitionTime": ("DS", [tr_s * 1000]),
        "FlipAngle": ("DS", [64.0]),
        "NumberOfAverages": ("DS", [1.0]),
        "SliceThickness": ("DS", [dz]),
        "PixelSpacing": ("DS", list(pix)),
        "NumberOfImagesInMosaic": ("US", [n]),
        "SliceNormalVector": ("FD", [f"{v:.8f}" for v in normal]),
        "AcquisitionMatrixText": ("SH", [f"{rows}p*{cols}"]),
        "MosaicRefAcqTimes": ("FD", [f"{t:.4f}" for t in slice_times]),
        "SlicePosition_PCS": ("FD", [f"{v:.6f}" for v in ipp]),
        "PhaseEncodingDirectionPositive": ("IS", [1]),
        "BandwidthPerPixelPhaseEncode": ("FD", [30.0]),
        "RealDwellTime": ("IS", [2700]),
        "ImaPATModeText": ("LO", ["p2"]),
        "SliceMeasurementDuration": ("DS", [tr_s * 1e6 / max(n, 1)]),
        "TimeAfterStart": ("DS", [(instance - 1) * tr_s]),
        "ICE_Dims": ("LO", [f"X_1_1_1_{instance}_1_1_1_1_1_1_1_1"]),
        "ProtocolSliceNumber": ("IS", [0]),
        "ImaRelTablePosition": ("IS", [0, 0, 0]),
        "SequenceMask": ("UL", [134217729]),
    })
    phoenix = "\n".join(["### ASCCONV BEGIN ###", f"sKSpace.lBaseResolution\t = {cols}",
                          f"sKSpace.lPhaseEncodingLines\t = {rows}", f"sSliceArray.lSize\t = {n}",
                          f"alTR[0]\t = {int(tr_s * 1e6)}", "sSliceArray.ucMode\t = 0x4",
                          "### ASCCONV END ###"])
    series_csa = encode_csa2({"MrPhoenixProtocol": ("UN", [phoenix]), "UsedPatientWeight": ("IS", [70]),
                              "SliceArrayConcatenations": ("IS", [1])})
    stamp = ds.StudyDate
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    block.add_new(0x09, "LO", stamp)
    block.add_new(0x10, "OB", csa)
    block.add_new(0x18, "CS", "MR")
    block.add_new(0x19, "LO", stamp)
    block.add_new(0x20, "OB", series_csa)
    ds.PixelData = mosaic.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_enhanced(path: str | Path, data: np.ndarray, affine: np.ndarray, series_number: int, instance: int,
                   tr_s: float = 1.5, series_uid: str | None = None, subject: str = "", session: str = "") -> None:
    """Write one volume as an enhanced multi-frame MR DICOM (the XA-series layout): one frame per slice."""
    path = Path(path)
    rows, cols, n = data.shape
    iop, pix, dz, normal, ipp = _geometry(affine)
    lps = RAS_TO_LPS @ np.asarray(affine, float)
    uid = series_uid or series_uid_for(series_number, subject=subject, session=session)
    ds = _base(path, ENHANCED_MR_IMAGE, series_number, uid, instance, tr_s)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    shared = pydicom.Dataset()
    measures = pydicom.Dataset()
    measures.PixelSpacing = [f"{pix[0]:g}", f"{pix[1]:g}"]
    measures.SliceThickness = measures.SpacingBetweenSlices = f"{dz:g}"
    orient = pydicom.Dataset()
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orient])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dim_stack, dim_pos = pydicom.Dataset(), pydicom.Dataset()
    dim_stack.DimensionIndexPointer = pydicom.tag.Tag("StackID")
    dim_stack.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    dim_pos.DimensionIndexPointer = pydicom.tag.Tag("InStackPositionNumber")
    dim_pos.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    ds.DimensionIndexSequence = DicomSequence([dim_stack, dim_pos])
    frames = []
    for s in range(n):
        item = pydicom.Dataset()
        content = pydicom.Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = s + 1
        content.DimensionIndexValues = [1, s + 1]
        content.TemporalPositionIndex = 1
        position = pydicom.Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ np.array([0, 0, s]) + ipp]
        item.FrameContentSequence = DicomSequence([content])
        item.PlanePositionSequence = DicomSequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    vals = np.clip(np.rint(data), 0, 4095).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(vals.transpose(2, 0, 1)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_slices(folder: str | Path, name: str, data: np.ndarray, affine: np.ndarray, series_number: int, volume: int,
                 tr_s: float = 1.5, series_uid: str | None = None, temporal_position: bool = True,
                 order: list[int] | None = None, subject: str = "", session: str = "",
                 xa_split: bool = False) -> list[Path]:
    """One volume as a per-slice export writes it (Philips, GE, Siemens non-mosaic): a classic MR image
    per slice, written in ``order`` (default: ascending slice index). ``xa_split``: as a Siemens XA
    interoperability export splits an fMRI run, the volume is a series of its own (:func:`_split_volume`).

    ``name`` is formatted with ``run``, ``volume``, ``slice`` and ``instance`` (InstanceNumber: counted
    over the series, 1-based). Each slice carries its own ImagePositionPatient; AcquisitionNumber is the
    volume (1-based) and, when ``temporal_position``, TemporalPositionIdentifier too. Returns the paths in
    the order written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols, n = data.shape
    iop, pix, dz, _normal, ipp = _geometry(affine)
    lps = RAS_TO_LPS @ np.asarray(affine, float)
    uid = series_uid or series_uid_for(series_number, subject=subject, session=session)
    paths = []
    own_series = series_number * 1000 + volume + 1 if xa_split else series_number
    for s in (range(n) if order is None else order):
        instance = s + 1 if xa_split else volume * n + s + 1
        path = folder / name.format(run=own_series, volume=volume, slice=s, instance=instance)
        ds = _base(path, MR_IMAGE, own_series, uid, instance, tr_s)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.AcquisitionNumber = str(volume + 1)
        if temporal_position and not xa_split:
            ds.TemporalPositionIdentifier = str(volume + 1)
        if xa_split:
            _split_volume(ds, series_number, uid, volume)
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{pix[0]:g}", f"{pix[1]:g}"]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{dz:g}"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ np.array([0, 0, s]) + ipp]
        ds.PixelData = np.ascontiguousarray(np.clip(np.rint(data[:, :, s]), 0, 4095).astype(np.uint16)).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def _split_volume(ds: FileDataset, series_number: int, acquisition_uid: str, volume: int) -> None:
    """Siemens XA interoperability's split fMRI: SeriesNumber acquisition x 1000 + volume (set by the caller),
    a SeriesInstanceUID per volume, MFSPLIT last in ImageType, the acquisition's series named in
    RelatedSeriesSequence as the "Alternate SOP Class instance"; protocol and description stay the run's."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MFSPLIT"]
    ds.SoftwareVersions = "syngo MR XA30 (rtdecode simulator)"
    ds.SeriesDescription = ds.ProtocolName = f"func_task-rt_run-{series_number:02d}"
    ds.SeriesInstanceUID = f"{acquisition_uid}.{volume + 1}"
    purpose = pydicom.Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "121326", "DCM", "Alternate SOP Class instance"
    related = pydicom.Dataset()
    related.StudyInstanceUID, related.SeriesInstanceUID = ds.StudyInstanceUID, acquisition_uid
    related.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    ds.RelatedSeriesSequence = DicomSequence([related])


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
