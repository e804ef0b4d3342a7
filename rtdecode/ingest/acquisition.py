"""Slice timing, multiband factor and phase-encoding direction from a Siemens mosaic's CSA headers.

Read once per volume for the BIDS sidecar (docs/session-folder.md), in BIDS's units and in the axes of
the volumes rtdecode stores: array axis 0 runs down the image rows ("i"), axis 1 along them ("j"),
axis 2 along the slice normal, the mosaic's tiles in order. Only timing and geometry: nothing about
the person. A field the headers do not state is left out, never guessed.
"""

from __future__ import annotations

import re
import warnings
from typing import Any


def _csa(ds: Any, tag: tuple[int, int]) -> dict:
    elem = ds.get(tag)
    if elem is None:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel.nicom says on import that it is experimental
        from nibabel.nicom import csareader
    try:
        return csareader.read(elem.value).get("tags", {})
    except Exception:  # noqa: BLE001 - an unreadable CSA header only means these fields are not stated
        return {}


def _items(tags: dict, name: str) -> list:
    return list(tags.get(name, {}).get("items", []) or [])


def _protocol_value(ds: Any, key: str) -> str | None:
    """One ``key = value`` line of the MrPhoenixProtocol (ASCCONV) text in the series CSA header, found in
    its bytes (parsing the whole header per volume would cost milliseconds on the real-time path)."""
    elem = ds.get((0x0029, 0x1020))
    if elem is None or not isinstance(elem.value, bytes):
        return None
    match = re.search(rb"\n" + re.escape(key.encode()) + rb"\s*=\s*([0-9]+)", elem.value)
    return match.group(1).decode() if match else None


_SEEN: dict[str, dict[str, Any]] = {}  # series uid -> its fields: one series' headers say the same each volume


def acquisition_fields(ds: Any) -> dict[str, Any]:
    """``SliceTiming`` (s, one per slice of the stored volume), ``MultibandAccelerationFactor`` and
    ``PhaseEncodingDirection`` (i/j with '-' for negative polarity), each only where the headers state it.
    Read once per series (parsing the CSA header costs about a millisecond a volume)."""
    series = str(ds.get("SeriesInstanceUID", "") or "")
    if series and series in _SEEN:
        return {k: list(v) if isinstance(v, list) else v for k, v in _SEEN[series].items()}
    fields = _read(ds)
    if series:
        if len(_SEEN) >= 64:
            _SEEN.pop(next(iter(_SEEN)))
        _SEEN[series] = dict(fields)
    return fields


def _read(ds: Any) -> dict[str, Any]:
    image = _csa(ds, (0x0029, 0x1010))
    fields: dict[str, Any] = {}
    times = _items(image, "MosaicRefAcqTimes")
    n_slices = next(iter(_items(image, "NumberOfImagesInMosaic")), None)
    if times and (n_slices is None or len(times) >= int(n_slices)):
        fields["SliceTiming"] = [round(float(t) / 1000.0, 6) for t in times[: int(n_slices or len(times))]]
    multiband = _protocol_value(ds, "sSliceAcceleration.lMultiBandFactor")
    if multiband is not None and multiband.isdigit():
        fields["MultibandAccelerationFactor"] = int(multiband)
    direction = str(ds.get("InPlanePhaseEncodingDirection", "")).strip().upper()
    positive = next(iter(_items(image, "PhaseEncodingDirectionPositive")), None)
    if direction in ("ROW", "COL") and positive in (0, 1):
        # COL: phase changes from row to row, down the image: array axis 0 ("i"); ROW: along a row ("j").
        fields["PhaseEncodingDirection"] = ("i" if direction == "COL" else "j") + ("" if positive == 1 else "-")
    return fields
