"""Volumes written one file per slice (Philips and GE real-time exports, Siemens non-mosaic).

:func:`read_slice` reads one classic single-frame MR image and says which volume it belongs to;
:func:`assemble` stacks a volume's slices by their position along the slice normal, whatever order
they arrived in, with the same geometry as an enhanced multi-frame file of the same slices (nibabel's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtdecode.base.errors import IngestError
from rtdecode.ingest.dicom_pixels import decode_frames
from rtdecode.ingest.geometry import SAME_ORIENTATION, orientation, stack_slices
from rtdecode.ingest.reader import Volume, open_dicom, safe_meta, series_of
from rtdecode.ingest.xa_split import is_split

Grouping = Literal["auto", "temporal_position", "acquisition_number", "instance_number"]
GROUPINGS = ("auto", "temporal_position", "acquisition_number", "instance_number")


@dataclass
class Slice:
    """One slice: pixels (rows x cols), where it lies, and which volume of its series it belongs to."""

    data: np.ndarray
    iop: np.ndarray  # 3x2: row and column cosines
    position: np.ndarray  # ImagePositionPatient, LPS mm
    pixel_spacing: tuple[float, float]
    thickness: float
    series: str
    volume: int  # 0-based index of the volume within the series
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def volume_index(ds: Any, path: Path, n_slices: int, grouping: Grouping = "auto") -> int:
    """Which volume (0-based) a slice belongs to: TemporalPositionIdentifier, AcquisitionNumber, or
    the InstanceNumber counted in slices; ``auto`` takes the first of temporal position and instance,
    or AcquisitionNumber for a Siemens XA export split into a series per volume (MFSPLIT)."""
    def number(keyword: str) -> int | None:
        value = ds.get(keyword)
        if value in (None, ""):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:  # 1-based in the standard; anything else would file the slice under a wrong volume
            raise IngestError(path, f"{keyword} must be a whole number from 1, got {value!r}")
        return n

    if grouping == "auto" and is_split(ds) and number("AcquisitionNumber") is not None:
        return number("AcquisitionNumber") - 1  # XA split export: InstanceNumber restarts with every volume
    if grouping in ("auto", "temporal_position") and number("TemporalPositionIdentifier") is not None:
        return number("TemporalPositionIdentifier") - 1
    if grouping == "acquisition_number" and number("AcquisitionNumber") is not None:
        return number("AcquisitionNumber") - 1
    if grouping in ("auto", "instance_number") and number("InstanceNumber") is not None:
        return (number("InstanceNumber") - 1) // n_slices
    wanted = {"temporal_position": "TemporalPositionIdentifier", "acquisition_number": "AcquisitionNumber",
              "instance_number": "InstanceNumber"}.get(grouping, "TemporalPositionIdentifier or InstanceNumber")
    raise IngestError(path, f"a slice without {wanted}: cannot tell which volume it belongs to "
                            f"(scanner.slice_grouping = {grouping!r})")


def read_slice(path: str | Path, n_slices: int, grouping: Grouping = "auto") -> Slice:
    """One slice file; IngestError when it is not one slice of an MR series (a mosaic, a multi-frame)."""
    path = Path(path)
    ds, keyword = open_dicom(path)
    image_type = [str(t).upper() for t in ds.get("ImageType", [])]
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if {"MOSAIC", "VFRAME"} & set(image_type) or "PerFrameFunctionalGroupsSequence" in ds or frames > 1:
        raise IngestError(path, "a whole volume in one file (mosaic, UIH grid or multi-frame), but scanner.slices_per_volume "
                                f"= {n_slices} expects one slice per file")
    if "ImagePositionPatient" not in ds:
        raise IngestError(path, "a slice without ImagePositionPatient: its place in the volume is unknown")
    return Slice(
        data=decode_frames(ds, path, keyword)[0],
        iop=orientation(ds.get("ImageOrientationPatient"), path),
        position=np.array([float(v) for v in ds.ImagePositionPatient]),
        pixel_spacing=tuple(float(v) for v in ds.get("PixelSpacing", [1, 1])),
        thickness=float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0),
        series=series_of(ds), volume=volume_index(ds, path, n_slices, grouping), source=str(path), meta=safe_meta(ds),
    )


def assemble(slices: list[Slice]) -> Volume:
    """A volume from its slices (any arrival order); IngestError naming the first file when they do not
    make one volume (orientations, matrix sizes or pixel spacings differ, two share a position, gaps differ)."""
    first = slices[0]
    where = Path(first.source)
    for s in slices[1:]:
        if np.abs(s.iop - first.iop).max() > SAME_ORIENTATION:
            raise IngestError(Path(s.source), f"slice orientation differs from {where.name}'s within volume {first.volume}")
        if s.data.shape != first.data.shape or not np.allclose(s.pixel_spacing, first.pixel_spacing):
            raise IngestError(Path(s.source), f"slice matrix {s.data.shape} / spacing {s.pixel_spacing} differs from "
                                              f"{where.name}'s {first.data.shape} / {first.pixel_spacing}")
    frames = np.stack([s.data for s in slices])
    positions = np.stack([s.position for s in slices])
    data, affine = stack_slices(frames, first.iop, first.pixel_spacing, positions, where, first.thickness)
    ordered = sorted(slices, key=lambda s: float(s.position @ np.cross(first.iop[:, 1], first.iop[:, 0])))
    meta = {**ordered[0].meta, "slice_files": [Path(s.source).name for s in ordered]}
    return Volume(data=data, affine=affine, series=first.series, meta=meta, source=ordered[0].source)
