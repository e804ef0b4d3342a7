"""United Imaging (UIH) "grid" volumes: one classic MR image holding every slice of a volume as tiles.

UIH marks them with VFRAME in ImageType. Their private block "Image Private Header" (group 0065)
gives the number of slices (0065,xx50) and one item per slice in the MR VFrame Sequence (0065,xx51),
each with the slice's ImagePositionPatient. Unlike a Siemens mosaic the tile grid is
ceil(sqrt(n)) columns by ceil(n / columns) rows, and the top-level position is not the volume's: each
slice's own position is used, so the geometry is that of the same slices written one file each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.base.errors import IngestError
from rtdecode.ingest.dicom_pixels import untile
from rtdecode.ingest.geometry import stack_slices

PRIVATE_CREATOR = "Image Private Header"
SLICES, FRAMES = 0x50, 0x51  # offsets in the creator's block


def _private(ds: Any, offset: int) -> Any:
    """The element at ``offset`` of UIH's private block in group 0065, wherever the block was reserved."""
    try:
        block = ds.private_block(0x0065, PRIVATE_CREATOR)
    except KeyError:
        return None
    return block[offset] if offset in block else None


def uih_grid(ds: Any, path: Path, keyword: str, iop: np.ndarray, pixel_spacing: tuple[float, float],
             thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Volume (rows, cols, slices) and RAS affine of a UIH grid image; IngestError naming what is missing."""
    count = _private(ds, SLICES)
    try:
        n = int(float(count.value)) if count is not None else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise IngestError(path, "a UIH grid image (VFRAME in ImageType) without its number of slices "
                                f"(0065,xx50 of the {PRIVATE_CREATOR!r} block)")
    frames = _private(ds, FRAMES)
    items = list(frames.value) if frames is not None and frames.VR == "SQ" else []
    positions = [item.get("ImagePositionPatient") for item in items]
    if len(items) != n or any(p is None or len(p) != 3 for p in positions):
        raise IngestError(path, f"a UIH grid image of {n} slices whose MR VFrame Sequence (0065,xx51) gives "
                                f"{sum(p is not None for p in positions)} slice positions: its slices cannot be placed")
    cols_t = math.ceil(math.sqrt(n))
    rows_t = math.ceil(n / cols_t)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows % rows_t or cols % cols_t:
        raise IngestError(path, f"a UIH grid of {rows}x{cols} pixels cannot hold {rows_t}x{cols_t} tiles of {n} slices")
    data = untile(ds, path, keyword, rows_t, cols_t, n)
    where = np.array([[float(v) for v in p] for p in positions])
    return stack_slices(data.transpose(2, 0, 1), iop, pixel_spacing, where, path, thickness)
