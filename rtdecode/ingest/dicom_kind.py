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
}


def not_a_volume(ds: Any) -> str | None:
    """One line saying what the file is when it is not a BOLD volume (None when it may be one)."""
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop and sop not in VOLUME_SOP_CLASSES:
        if sop in KNOWN_OTHERS:
            return f"not an fMRI volume: {KNOWN_OTHERS[sop]} (SOP class {sop})"
        from pydicom.uid import UID

        name = UID(sop).name
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
