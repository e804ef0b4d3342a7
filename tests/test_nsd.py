"""NSD as MindEye2 distributes it: tiny files in the published layout, read back into training sets."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from calibration.nsd import load_nsd_subject, nsd_shards, read_behav
from models.standin import StandInEmbedder

N_IMAGES = 30


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _shard(path, samples: list[tuple[int, int]]) -> None:
    """A webdataset shard: per sample <key>.behav.npy (1, 17) plus the fields MindEye2 also ships."""
    with tarfile.open(path, "w") as tar:
        for n, (image, trial) in enumerate(samples):
            behav = np.zeros((1, 17), np.float64)
            behav[0, 0], behav[0, 5] = image, trial
            for field, array in (("behav", behav), ("past_behav", -np.ones((1, 17))), ("olds_behav", np.zeros((1, 17)))):
                data = _npy(array)
                info = tarfile.TarInfo(f"sample{n:06d}.{field}.npy")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_tiny_nsd(root, subjects: dict[int, int], sessions: int = 2, trials: int = 24, seed: int = 0,
                   test_images: tuple[int, ...] = ()) -> None:
    """Betas hdf5 per subject (voxel counts differ), the image hdf5, train shards per session and, with
    ``test_images``, a new_test shard showing each of them twice (their rows after the train rows)."""
    import h5py

    from rtdecode.gallery.builtin import StimulusSet

    rng = np.random.default_rng(seed)
    pictures = StimulusSet(size=224).images(range(N_IMAGES)).astype(np.float32) / 255
    with h5py.File(root / "coco_images_224_float16.hdf5", "w") as f:
        f["images"] = pictures.transpose(0, 3, 1, 2).astype(np.float16)
    tokens = StandInEmbedder().embed((pictures * 255).round().astype(np.uint8)).reshape(N_IMAGES, -1)
    for subject, voxels in subjects.items():
        n = sessions * trials
        shown = rng.integers(0, N_IMAGES, n)
        order = rng.permutation(n)  # shards list trials out of betas order, as the published ones do
        shown = np.r_[shown, np.repeat(np.asarray(test_images, int), 2)]
        signal = tokens[shown] @ rng.normal(size=(tokens.shape[1], voxels)) / 30
        with h5py.File(root / f"betas_all_subj0{subject}_fp32_renorm.hdf5", "w") as f:
            f["betas"] = (signal + rng.normal(size=signal.shape)).astype(np.float32)
        folder = root / "wds" / f"subj0{subject}" / "train"
        folder.mkdir(parents=True)
        for s in range(sessions):
            rows = order[s * trials:(s + 1) * trials]
            _shard(folder / f"{s}.tar", [(int(shown[r]), int(r)) for r in rows])
        if test_images:
            (folder.parent / "new_test").mkdir()
            _shard(folder.parent / "new_test" / "0.tar", [(int(shown[r]), int(r)) for r in range(n, len(shown))])


def test_reads_betas_images_and_shards_in_the_published_layout(tmp_path):
    import h5py

    write_tiny_nsd(tmp_path, {1: 57, 2: 43})
    behav = read_behav(tmp_path / "wds/subj01/train/1.tar")
    assert behav.shape == (24, 2)  # past/olds fields skipped
    data = load_nsd_subject(tmp_path, 1, StandInEmbedder(), sessions=1, cache=tmp_path / "cache")
    first = read_behav(tmp_path / "wds/subj01/train/0.tar")
    assert data.subject == "subj01" and data.betas.shape == (24, 57)
    with h5py.File(tmp_path / "betas_all_subj01_fp32_renorm.hdf5") as f:
        assert np.array_equal(data.betas[3], f["betas"][first[3, 1]])
    assert data.images[3] == f"nsd-{first[3, 0]:05d}"
    from rtdecode.gallery.builtin import StimulusSet

    expected = StandInEmbedder().embed(StimulusSet(size=224).images([first[3, 0]]))[0]
    assert np.allclose(data.tokens[3], expected, atol=0.05)  # float16 storage of the pixels
    assert len(load_nsd_subject(tmp_path, 2, StandInEmbedder()).betas) == 48  # every session


def test_nsd_errors_name_the_file(tmp_path):
    write_tiny_nsd(tmp_path, {1: 20}, sessions=1)
    with pytest.raises(FileNotFoundError, match=r"subj01/train: sessions 1.tar, 2.tar are missing"):
        nsd_shards(tmp_path, 1, sessions=3)
    with pytest.raises(FileNotFoundError, match="wds/subj03/train: no .tar shards"):
        load_nsd_subject(tmp_path, 3, StandInEmbedder())
    _shard(tmp_path / "wds/subj01/train/0.tar", [(1, 999)])
    with pytest.raises(ValueError, match=r"betas_all_subj01_fp32_renorm.hdf5: the shards point at rows \[999\]"):
        load_nsd_subject(tmp_path, 1, StandInEmbedder())


def test_pretrain_from_nsd_through_the_cli(tmp_path, capsys):
    from rtdecode.cli import main

    (tmp_path / "nsd").mkdir()
    write_tiny_nsd(tmp_path / "nsd", {1: 57, 2: 43})
    assert main(["pretrain", "--nsd", str(tmp_path / "nsd"), "--subjects", "1", "2", "--embedder", "standin",
                 "--out", str(tmp_path / "shared"), "--epochs", "1", "--batch-size", "8"]) == 0
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert config["subjects"] == ["subj01", "subj02"] and config["voxels"] == [57, 43]
    assert json.loads((tmp_path / "shared" / "embedder.json").read_text())["kind"] == "standin"
    assert main(["pretrain", "--nsd", str(tmp_path / "nsd"), "--subjects", "x", "--embedder", "standin",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "rtdecode pretrain: NSD subjects are numbers 1-8, got 'x'" in capsys.readouterr().err


def test_nsd_test_images_stay_out_of_pretraining_and_are_what_calibration_holds_out(tmp_path, capsys):
    """MindEye2 keeps the shared 1,000 (new_test) out of all training; round 2's start pretrained on them."""
    from rtdecode.cli import main

    (tmp_path / "nsd").mkdir()
    write_tiny_nsd(tmp_path / "nsd", {1: 57, 2: 43, 3: 40}, test_images=(0, 1, 2, 3, 4))
    test = {f"nsd-{i:05d}" for i in range(5)}
    assert main(["pretrain", "--nsd", str(tmp_path / "nsd"), "--subjects", "1", "2", "--embedder", "standin",
                 "--out", str(tmp_path / "shared"), "--epochs", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "subj01:" in out and "of NSD's 5 test images left out of pretraining" in out
    trained = set((tmp_path / "shared" / "training_images.txt").read_text().split())
    assert trained and not trained & test
    assert main(["calibrate", "--nsd", str(tmp_path / "nsd"), "--subject", "3", "--embedder", "standin",
                 "--pretrained", str(tmp_path / "shared"), "--out", str(tmp_path / "s3"), "--epochs", "2",
                 "--batch-size", "8", "--no-report"]) == 0
    summary = json.loads((tmp_path / "s3" / "training.json").read_text())
    assert summary["evaluation"]["held_out_images"] == 5
    assert summary["held_out_overlap"] == {"pretraining": 0, "calibration": 0}
