"""A session's one voxel space: the mask every run's vectors are sampled in, and the grid it lives on.

Betas are z-scored over the whole session and averaged across runs, so every run must give the same
voxels in the same order. The first run fixes the space (its mask, on the grid of the session
reference or of its own reference volume); later runs are registered to that reference once and
sampled at the same mask points. The space is stored in the session folder, so a restart uses the very
same voxel set. No I/O beyond the three files named by :class:`SpaceFiles`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from rtdecode.base.errors import ConfigError
from rtdecode.ingest.reader import Volume
from rtdecode.preprocess.pipeline import Mask, same_volume


@dataclass
class VoxelSpace:
    """The session's mask and the reference volume whose world it is defined in.

    ``reference`` is the volume later runs are registered to: ``preprocess.session_reference`` when
    configured, else the first run's reference volume.
    """

    reference: Volume
    mask: Mask
    origin: dict = field(default_factory=dict)  # how it was made: {"reference": ..., "mask": ...}

    @property
    def n_voxels(self) -> int:
        return self.mask.n_voxels


def same_mask(a: Mask, b: Mask) -> bool:
    """Whether two masks select the same voxels of the same grid."""
    return (a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=1e-4)
            and np.array_equal(np.asarray(a.data, bool), np.asarray(b.data, bool)))


class SpaceFiles:
    """Where a session's voxel space is kept: ``<prefix>_boldref.nii``, ``<prefix>_desc-brain_mask.nii``
    and ``<prefix>_desc-brain_mask.json`` (written last: its presence means the space is whole)."""

    def __init__(self, derivatives: Path, prefix: str) -> None:
        self.boldref = Path(derivatives) / f"{prefix}_boldref.nii"
        self.mask = Path(derivatives) / f"{prefix}_desc-brain_mask.nii"
        self.record = Path(derivatives) / f"{prefix}_desc-brain_mask.json"

    def load(self) -> VoxelSpace | None:
        """The stored space, or None when none was stored yet."""
        if not self.record.exists():
            return None
        try:
            origin = json.loads(self.record.read_text())
            ref, mask = nib.load(self.boldref), nib.load(self.mask)
            reference = Volume(np.asarray(ref.dataobj, np.float32), np.asarray(ref.affine, float))
            space = VoxelSpace(reference, Mask(np.asarray(mask.dataobj) > 0, np.asarray(mask.affine, float)), origin)
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            raise ConfigError(f"{self.record.parent}: the session's voxel space cannot be read ({exc}); "
                              "it is needed so every run gives the same voxels") from None
        if space.n_voxels != origin.get("n_voxels"):
            raise ConfigError(f"{self.mask}: {space.n_voxels} voxels, but {self.record.name} says "
                              f"{origin.get('n_voxels')}; the session's voxel space is damaged")
        return space

    def save(self, space: VoxelSpace) -> None:
        """Store the space: the images first, then the record (each written whole, then renamed)."""
        self.record.parent.mkdir(parents=True, exist_ok=True)
        images = ((self.boldref, nib.Nifti1Image(np.asarray(space.reference.data, np.float32), space.reference.affine)),
                  (self.mask, nib.Nifti1Image(space.mask.data.astype(np.uint8), space.mask.affine)))
        for path, img in images:
            tmp = path.with_name(f".{path.name}.tmp.nii")
            nib.save(img, tmp)
            os.replace(tmp, path)
        tmp = self.record.with_name(f".{self.record.name}.tmp")
        tmp.write_text(json.dumps({**space.origin, "n_voxels": space.n_voxels}, indent=1))
        os.replace(tmp, self.record)


def config_conflict(space: VoxelSpace, where: Path, mask: Mask | None, mask_path: object,
                    reference: Volume | None, reference_path: object) -> str | None:
    """One line when the configured mask or session reference is not the session's stored space."""
    if mask is not None and not same_mask(mask, space.mask):
        how = " (the same count, other voxels)" if mask.n_voxels == space.n_voxels else ""
        return (f"preprocess.mask: {mask_path} selects {mask.n_voxels} voxels{how}, but this session's voxel space "
                f"has {space.n_voxels} ({where}); a session keeps one voxel space: give the mask it began with "
                "(or none), or start a new session")
    if reference is not None and not same_volume(reference, space.reference):
        return (f"preprocess.session_reference: {reference_path} is not the reference this session's voxel space "
                f"({space.n_voxels} voxels, {where}) was made on; give the one it began with (or none), or start "
                "a new session")
    return None
