"""What a DICOM file is, when it is not one volume of an fMRI series (set aside at once, named)."""

from __future__ import annotations

from typing import Any

# Images a BOLD volume can come in: classic MR (mosaics), enhanced MR and its legacy-converted form.
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
KNOWN_OTHERS = {
    "1.3.12.2.1107.5.9.1": "a Siemens non-image object (protocol, report or raw data)",
    "1.2.840.10008.5.1.4.1.1.7": "a secondary capture (a screenshot or report)",
    "1.2.840.10008.5.1.4.1.1.104.1": "an encapsulated PDF document",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.4.2": "an MR spectroscopy object",
    "1.2.840.10008.1.3.10": "a DICOMDIR (a media directory listing other files; no image)",
}
STRUCTURED_REPORT = "1.2.840.10008.5.1.4.1.1.88."


def not_a_volume(ds: Any) -> str | None:
    """One line saying what the file is when it is not a BOLD volume (None when it may be one)."""
    meta = getattr(ds, "file_meta", None)
    # A DICOMDIR has no SOP Class UID in its data set: the file meta's media storage class names it.
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") or "")
    if sop and sop not in VOLUME_SOP_CLASSES:
        if sop in KNOWN_OTHERS:
            return f"not an fMRI volume: {KNOWN_OTHERS[sop]} (SOP class {sop})"
        from pydicom.uid import UID

        name = UID(sop).name
        if sop.startswith(STRUCTURED_REPORT):
            return f"not an fMRI volume: a structured report ({name}, SOP class {sop})"
        if name == sop:
            return f"not an fMRI volume: an object of SOP class {sop}, which is not an MR image"
        return f"not an fMRI volume: a {name} object (SOP class {sop})"
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    description = str(ds.get("SeriesDescription", "") or "")
    shown = "\\".join(image_type)
    if {"LOCALIZER", "SCOUT"} & set(image_type):
        return f"not an fMRI volume: a localiser (ImageType {shown}, series {description!r})"
    component = str(ds.get("ComplexImageComponent", "") or "").upper()
    if "P" in image_type[2:] or "PHASE" in image_type[2:] or component == "PHASE":
        return f"not an fMRI volume: a phase image (ImageType {shown}, series {description!r})"
    return None


def not_part10(raw: bytes) -> str:
    """One line for bytes without the Part 10 preamble and 'DICM': a bare data set, or not DICOM at all."""
    import struct

    group, _elem = struct.unpack_from("<HH", raw, 0) if len(raw) >= 4 else (0, 0)
    if group in (0x0002, 0x0008) and len(raw) >= 8:
        return ("a DICOM data set without the file meta header (no 128-byte preamble and 'DICM', so no "
                "TransferSyntaxUID): the export must write DICOM files (Part 10)")
    return "not a DICOM file (no 'DICM' at byte 128)"
