"""NSD as MindEye2 distributes it (Hugging Face dataset pscotti/mindeyev2), read into training sets.

Files under one folder (facts: ../shared/reference/mindeye2.md section 4):
- ``betas_all_subj0X_fp32_renorm.hdf5``: dataset ``betas``, (trials, voxels) float32, every trial of
  the subject's sessions, already normalised per session;
- ``coco_images_224_float16.hdf5``: dataset ``images``, (73000, 3, 224, 224) float16 in [0, 1];
- ``wds/subj0X/train/<session>.tar`` and ``wds/subj0X/new_test/0.tar``: webdataset shards whose
  samples carry ``behav.npy`` (1, 17): column 0 the 73k image index, column 5 the row in the betas.
The shards are read with the standard library's tarfile: samples are plain ``.npy`` arrays, loaded
without pickle. Image ids are ``nsd-<73k index>``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from calibration.data import SubjectData

BEHAV_IMAGE, BEHAV_TRIAL = 0, 5


def read_behav(shard: str | Path) -> np.ndarray:
    """(73k image index, betas row) of every sample in one webdataset shard, in shard order."""
    rows = []
    with tarfile.open(shard) as tar:
        for member in tar:
            # webdataset: the key runs to the first dot of the file name, the rest names the field
            if not member.isfile() or Path(member.name).name.partition(".")[2] != "behav.npy":
                continue
            behav = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
            if behav.ndim != 2 or behav.shape[1] <= BEHAV_TRIAL:
                raise ValueError(f"{shard}: {member.name} has shape {behav.shape}, expected (1, 17)")
            rows.append((int(behav[0, BEHAV_IMAGE]), int(behav[0, BEHAV_TRIAL])))
    if not rows:
        raise ValueError(f"{shard}: no '<key>.behav.npy' samples in this shard")
    return np.array(rows, dtype=np.int64)


def nsd_shards(root: str | Path, subject: int, split: str = "train", sessions: int | None = None) -> list[Path]:
    """The shards of one subject: train sessions 0..sessions-1 (all when None), or ``new_test``."""
    folder = Path(root) / "wds" / f"subj0{subject}" / split
    shards = sorted(folder.glob("*.tar"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    if not shards:
        raise FileNotFoundError(f"{folder}: no .tar shards (expected the wds/ folder of pscotti/mindeyev2)")
    if sessions is not None:
        wanted = {f"{i}.tar" for i in range(sessions)}
        missing = sorted(wanted - {p.name for p in shards}, key=lambda n: int(n[:-4]))
        if missing:
            raise FileNotFoundError(f"{folder}: sessions {', '.join(missing)} are missing")
        shards = [p for p in shards if p.name in wanted]
    return shards


def nsd_test_images(root: str | Path, subjects=range(1, 9)) -> set[str]:
    """NSD's test images (MindEye2's shared 1,000): every image in the subjects' ``new_test`` shards.
    MindEye2 keeps them out of all training, pretraining included; so does rtdecode."""
    ids: set[str] = set()
    for subject in subjects:
        for shard in sorted((Path(root) / "wds" / f"subj0{subject}" / "new_test").glob("*.tar")):
            ids |= {f"nsd-{i:05d}" for i in read_behav(shard)[:, 0]}
    return ids


def without_images(data: SubjectData, images: set[str]) -> tuple[SubjectData, int]:
    """The trials whose image is not in ``images``, and how many were left out."""
    keep = np.flatnonzero([im not in images for im in data.images])
    return data.subset(keep), len(data.images) - len(keep)


def read_nsd_images(root: str | Path, indices: np.ndarray) -> np.ndarray:
    """73k images as (N, 224, 224, 3) uint8 (what the embedders take)."""
    import h5py

    path = Path(root) / "coco_images_224_float16.hdf5"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the 73k-image file is missing")
    with h5py.File(path, "r") as f:
        if "images" not in f:
            raise KeyError(f"{path}: expected a dataset 'images', found {sorted(f.keys())}")
        ds = f["images"]
        unique, inverse = np.unique(np.asarray(indices), return_inverse=True)
        images = ds[unique][inverse]  # h5py reads increasing indices only
    return (np.clip(images.astype(np.float32), 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def load_nsd_subject(root: str | Path, subject: int, embedder, split: str = "train", sessions: int | None = None,
                     cache: Path | None = None, vae=None) -> SubjectData:
    """One NSD subject's trials with their target tokens (from ``embedder``, cached when ``cache`` is set)
    and, with ``vae`` (a :class:`models.blurry.VaeTargets`), their blurry-branch targets."""
    import h5py

    from models.clip import embed_images

    trials = np.concatenate([read_behav(s) for s in nsd_shards(root, subject, split, sessions)])
    path = Path(root) / f"betas_all_subj0{subject}_fp32_renorm.hdf5"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the betas of subject {subject} are missing")
    with h5py.File(path, "r") as f:
        if "betas" not in f:
            raise KeyError(f"{path}: expected a dataset 'betas', found {sorted(f.keys())}")
        n = f["betas"].shape[0]
        bad = trials[:, 1][(trials[:, 1] < 0) | (trials[:, 1] >= n)]
        if len(bad):
            raise ValueError(f"{path}: the shards point at rows {bad[:5].tolist()} but the file has {n} rows")
        unique, inverse = np.unique(trials[:, 1], return_inverse=True)
        betas = f["betas"][unique][inverse].astype(np.float32)
    images = [f"nsd-{i:05d}" for i in trials[:, 0]]
    unique_images, where = np.unique(trials[:, 0], return_inverse=True)
    pictures = read_nsd_images(root, unique_images)
    tokens = embed_images(embedder, pictures, cache)[where]
    blur = embed_images(vae, pictures, cache)[where] if vae is not None else None
    return SubjectData(f"subj0{subject}", betas, images, tokens, blur=blur)
