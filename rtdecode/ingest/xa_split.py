"""Siemens XA interoperability exports that split one acquisition into a series per volume.

In "Interoperability" mode an XA scanner (XA20, XA30 and later) writes classic DICOM, one file per
slice, and an fMRI run is split: every volume is a series of its own, with its own SeriesInstanceUID
and SeriesNumber (the dcm_qa_xa30i validation set's BOLD run begins at series 7001 for acquisition 7),
and MFSPLIT as the last value of ImageType. What stays constant over the volumes of one acquisition:
the series they were split from, named in RelatedSeriesSequence by an item whose purpose is
"Alternate SOP Class instance" (DCM 121326); ProtocolName and SeriesDescription; FrameOfReferenceUID.
AcquisitionNumber counts the volumes (1 for the first).
"""

from __future__ import annotations

from typing import Any

ALTERNATE_SOP_CLASS_INSTANCE = ("DCM", "121326")


def is_split(ds: Any) -> bool:
    """Whether the file is one volume of an acquisition split into a series per volume (MFSPLIT)."""
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    return "MFSPLIT" in image_type


def acquisition_of(ds: Any) -> str | None:
    """The identity shared by every volume of a split acquisition (None for files that are not split).

    The split-from series' UID when the file names it; else ProtocolName, the acquisition's series
    number (SeriesNumber // 1000) and FrameOfReferenceUID, which the volumes of one run share and
    another participant's or session's runs do not."""
    if not is_split(ds):
        return None
    for item in ds.get("RelatedSeriesSequence") or []:
        for purpose in item.get("PurposeOfReferenceCodeSequence") or []:
            code = (str(purpose.get("CodingSchemeDesignator", "")), str(purpose.get("CodeValue", "")))
            if code == ALTERNATE_SOP_CLASS_INSTANCE and item.get("SeriesInstanceUID"):
                return str(item.SeriesInstanceUID)
    try:
        acquisition = int(ds.get("SeriesNumber") or 0) // 1000
    except (TypeError, ValueError):
        acquisition = 0
    return f"{ds.get('ProtocolName', '')}|{acquisition}|{ds.get('FrameOfReferenceUID', '')}"
