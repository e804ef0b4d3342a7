"""Is the mask on the brain? Figures and a picture of a run's registration, for the operator.

Each run's reference is registered to the session reference once and the mask is carried through
that registration (rtdecode/preprocess/pipeline.py). If that goes wrong the mask misses visual cortex
and decoding falls to chance with no other sign, so at run start the scanner side sends these:

- ``registered_to``: what the run reference was registered to, in words ("the session reference",
  "run 1's reference"); absent when nothing was: the session's first run without a configured session
  reference is where the session's mask is made, and its registration is the identity;
- ``shift_mm`` and ``rotation_deg``: how far the registration moved (large values: the participant
  moved between runs, or the registration failed); sent only with ``registered_to``;
- ``in_brain``: the fraction of mask voxels that land on brain tissue of the run reference;
- ``match``: the correlation, over the mask, between the session reference and the registered run
  reference (only with a session reference);
- a mosaic: axial slices of the run reference with the mask outline drawn in red.

Pure functions, arrays in and out; the scanner side sends them (rtdecode/scanner/volumes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtdecode.preprocess.motion import sample_world

OUTLINE = np.array([255, 40, 40], np.uint8)


@dataclass(frozen=True)
class AlignmentLimits:
    max_shift_mm: float = 10.0
    max_rotation_deg: float = 10.0
    min_in_brain: float = 0.9
    min_match: float = 0.5
    min_voxels: int = 100


@dataclass(frozen=True)
class Alignment:
    shift_mm: float
    rotation_deg: float
    in_brain: float
    match: float | None
    n_voxels: int
    mosaic: np.ndarray  # (H, W, 3) uint8
    registered_to: str = ""  # what the run reference was registered to, in words; "": not registered

    def fields(self) -> dict:
        """The figures as run_started carries them: no shift or rotation for a run that was not registered
        (an identity would read as a registration that found nothing to correct)."""
        out: dict = {"in_brain": round(self.in_brain, 4)}
        if self.registered_to:
            out.update(registered_to=self.registered_to, shift_mm=round(self.shift_mm, 3),
                       rotation_deg=round(self.rotation_deg, 3))
        return out if self.match is None else {**out, "match": round(self.match, 4)}


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle of a 4x4 rigid matrix's rotation (axis-angle), in degrees."""
    cos = (np.trace(np.asarray(matrix, float)[:3, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def check_alignment(reference: np.ndarray, reference_affine: np.ndarray, mask: np.ndarray, mask_affine: np.ndarray,
                    registration: np.ndarray, session_reference: np.ndarray | None = None,
                    brain_threshold: float = 0.3, n_slices: int = 8, registered_to: str = "") -> Alignment:
    """Figures and mosaic for a mask (on its own grid) carried into a run reference by ``registration``
    (the 4x4 matrix mapping mask-grid world points into the run reference's world). ``registered_to``
    names what the run reference was registered to ("": nothing, the registration is the identity)."""
    reference = np.asarray(reference, np.float32)
    mask = np.asarray(mask, bool)
    ijk = np.argwhere(mask)
    points = ijk @ mask_affine[:3, :3].T + mask_affine[:3, 3]
    values, inside = sample_world(reference, np.linalg.inv(reference_affine) @ registration, points)
    brain = brain_threshold * np.percentile(reference, 98)
    in_brain = float(np.mean(inside & (values > brain))) if len(points) else 0.0
    match = None
    if session_reference is not None and len(points) > 2:
        own = np.asarray(session_reference, np.float32)[tuple(ijk.T)]
        ok = inside
        if ok.sum() > 2 and own[ok].std() > 0 and values[ok].std() > 0:
            match = float(np.corrcoef(own[ok], values[ok])[0, 1])
        else:
            match = 0.0
    shift = float(np.linalg.norm(np.asarray(registration, float)[:3, 3]))
    carried = _mask_on_reference(reference.shape, reference_affine, mask, mask_affine, registration)
    return Alignment(shift, rotation_angle_deg(registration), in_brain, match, int(mask.sum()),
                     mosaic(reference, carried, n_slices), registered_to)


def alignment_warnings(alignment: Alignment, limits: AlignmentLimits) -> list[str]:
    """One line per figure outside its limit (empty: the mask sits where it should)."""
    out = []
    if alignment.shift_mm > limits.max_shift_mm:
        out.append(f"registration shift {alignment.shift_mm:.1f} mm > {limits.max_shift_mm:g} mm")
    if alignment.rotation_deg > limits.max_rotation_deg:
        out.append(f"registration rotation {alignment.rotation_deg:.1f} deg > {limits.max_rotation_deg:g} deg")
    if alignment.in_brain < limits.min_in_brain:
        out.append(f"only {100 * alignment.in_brain:.0f} % of mask voxels on brain (< {100 * limits.min_in_brain:.0f} %)")
    in_brain_voxels = int(round(alignment.in_brain * alignment.n_voxels))
    if in_brain_voxels < limits.min_voxels:
        out.append(f"{in_brain_voxels} mask voxels on brain (< {limits.min_voxels})")
    if alignment.match is not None and alignment.match < limits.min_match:
        out.append(f"match to {alignment.registered_to or 'the reference'} {alignment.match:.2f} < {limits.min_match:g}")
    return out


def _mask_on_reference(shape: tuple[int, ...], affine: np.ndarray, mask: np.ndarray, mask_affine: np.ndarray,
                       registration: np.ndarray) -> np.ndarray:
    """The mask resampled (nearest) onto the run reference's grid."""
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    to_mask = np.linalg.inv(mask_affine) @ np.linalg.inv(registration)
    m = np.rint(world @ to_mask[:3, :3].T + to_mask[:3, 3]).astype(int)
    ok = np.all((m >= 0) & (m < np.asarray(mask.shape)), axis=1)
    out = np.zeros(len(world), bool)
    out[ok] = mask[m[ok, 0], m[ok, 1], m[ok, 2]]
    return out.reshape(shape)


def mosaic(volume: np.ndarray, outline_of: np.ndarray | None = None, n_slices: int = 8,
           vmax: float | None = None, colour: bool = False) -> np.ndarray:
    """Axial slices (the third voxel axis) in two rows, grey (or a heat scale with ``colour``), with the
    outline of ``outline_of`` in red. Slices span the mask's extent when a mask is given."""
    volume = np.nan_to_num(np.asarray(volume, np.float32))
    nz = volume.shape[2]
    if outline_of is not None and outline_of.any():
        zs = np.flatnonzero(outline_of.any(axis=(0, 1)))
        lo, hi = zs[0], zs[-1]
    else:
        lo, hi = 0, nz - 1
    picks = np.unique(np.linspace(lo, hi, n_slices).round().astype(int))
    top = vmax if vmax is not None else max(float(np.percentile(volume, 99)), 1e-6)
    scaled = np.clip(volume / top, 0, 1)
    tiles = []
    for z in picks:
        s = scaled[:, :, z]
        rgb = _heat(s) if colour else np.repeat((255 * s)[..., None], 3, axis=2).astype(np.uint8)
        if outline_of is not None:
            m = outline_of[:, :, z]
            edge = m & ~ndimage.binary_erosion(m)
            rgb[edge] = OUTLINE
        tiles.append(np.rot90(rgb))  # anterior up, as radiological viewers show axial slices
    cols = (len(tiles) + 1) // 2
    h, w = tiles[0].shape[:2]
    out = np.zeros((2 * h, cols * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return out


def _heat(s: np.ndarray) -> np.ndarray:
    """Black -> red -> yellow -> white, for maps such as temporal SNR."""
    r = np.clip(3 * s, 0, 1)
    g = np.clip(3 * s - 1, 0, 1)
    b = np.clip(3 * s - 2, 0, 1)
    return (255 * np.stack([r, g, b], axis=-1)).astype(np.uint8)


def volume_of(vector: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A masked vector put back on its mask's grid (zeros elsewhere)."""
    out = np.zeros(mask.shape, np.float32)
    out[np.asarray(mask, bool)] = vector
    return out
