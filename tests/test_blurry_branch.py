"""The blurry (low-level) branch: SD-VAE targets, its L1 term in training, and the decoder's blurry image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibration.data import SubjectData
from calibration.trainer import TrainConfig, predict_blur, train
from models.blurry import SD_SCALE, build_sd_vae, encode_images, load_sd_vae, vae_channels
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2

TINY_VAE = (32, 32, 32, 32)  # four levels, so 224 px -> 28 x 28 as the published VAE


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    """A small VAE saved as the published file is: a plain state dict in a .pth."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("vae") / "sd_image_var_autoenc.pth"
    torch.save(build_sd_vae(TINY_VAE, device="cpu").state_dict(), path)
    return path


def test_vae_targets_are_the_posterior_mode_of_2x_minus_1(vae_file):
    vae = load_sd_vae(vae_file)  # widths read from the file
    assert vae_channels(vae.state_dict()) == TINY_VAE
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    targets = encode_images(vae, images, batch=2)
    assert targets.shape == (3, 4, 28, 28) and targets.dtype == np.float32
    x = torch.from_numpy(images[1:2].astype(np.float32) / 255).permute(0, 3, 1, 2)
    expected = vae.encode(2 * x - 1).latent_dist.mean * SD_SCALE  # a diagonal Gaussian's mode is its mean
    assert np.allclose(targets[1], expected[0].detach().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, 3\), got shape \(224, 224\)"):
        encode_images(vae, images[0, :, :, 0])


def test_a_file_that_is_not_a_vae_is_named(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: no encoder\.down_blocks\.0"):
        load_sd_vae(tmp_path / "other.pth")


def _blurry_toy(n: int = 80, v: int = 36, seed: int = 0) -> SubjectData:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 6)).astype(np.float32)
    tokens = (latent @ rng.normal(size=(6, 4 * 8))).reshape(n, 4, 8).astype(np.float32)
    blur = (latent @ rng.normal(0, 0.3, size=(6, 4 * 28 * 28))).reshape(n, 4, 28, 28).astype(np.float32)
    betas = latent @ rng.normal(size=(6, v)) + rng.normal(0, 0.3, (n, v))
    return SubjectData("s1", betas.astype(np.float32), [f"im{i}" for i in range(n)], tokens, blur=blur).zscored()


def _blurry_model(v: int = 36) -> MindEye2:
    torch.manual_seed(0)
    return MindEye2(MindEye2Config(subjects=["s1"], voxels=[v], hidden=16, n_blocks=1, clip_tokens=4, clip_dim=8,
                                   blurry=True, blurry_channels=(32, 32, 32), prior_depth=1, prior_dim_head=4))


def _fit(pred: np.ndarray, target: np.ndarray) -> float:
    p, t = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    return float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(p, t, strict=True)]))


def test_mixed_inputs_get_the_same_mix_of_latent_targets():
    from calibration.losses import mix_rows, mixco

    rng = np.random.default_rng(4)
    voxels, latents = torch.randn(12, 5), torch.randn(12, 4, 3, 2)
    mixed, perm, lam = mixco(voxels, rng)
    assert torch.allclose(mixed, mix_rows(voxels, perm, lam))
    targets = mix_rows(latents, perm, lam)
    i = int(torch.nonzero(lam < 1)[0])
    assert torch.allclose(targets[i], lam[i] * latents[i] + (1 - lam[i]) * latents[perm[i]])
    assert torch.equal(targets[lam == 1], latents[lam == 1])


def test_training_fits_the_blurry_branch(caplog):
    data = _blurry_toy()
    model = _blurry_model()
    before = _fit(predict_blur(model, data), data.blur)
    history = train(model, [data], TrainConfig(epochs=20, batch_size=16, mixup_pct=0.5, max_lr=3e-3))
    after = _fit(predict_blur(model, data), data.blur)
    blurry = np.asarray(history["blurry"])
    assert len(blurry) == history["steps"] and blurry[-5:].mean() < 0.7 * blurry[:5].mean()
    assert after > before + 0.4, (before, after)  # measured: 0.00 -> 0.67
    # The total is what the recipe weighs: 30 x prior + contrastive + 0.5 x blurry.
    assert history["loss"][-1] == pytest.approx(30 * history["prior"][-1] + history["clip"][-1] + 0.5 * blurry[-1])

    plain = SubjectData("s1", data.betas, data.images, data.tokens)  # no VAE targets: the branch is left alone
    model = _blurry_model()
    weights = model.backbone.blin1.weight.detach().clone()
    history = train(model, [plain], TrainConfig(epochs=1, batch_size=16, mixup_pct=0.0))
    assert "blurry branch is not trained" in caplog.text and not any(history["blurry"])
    # blin1 still moves a little through weight decay only; its gradient was never fed.
    assert torch.allclose(model.backbone.blin1.weight, weights, rtol=0, atol=1e-3)


def test_calibrate_with_the_sd_vae_trains_the_branch_and_the_decoder_shows_blurry_images(
        tmp_path, latent_space, vae_file):
    from rtdecode.cli import main
    from rtdecode.decoder.core import Decoder
    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    write_dataset(tmp_path / "ds", [SubjectSpec(name="b1", n_voxels=110, seed=8, latent_dim=32)], sessions=1,
                  n_runs=2, trials_per_run=30, latent=latent_space)
    out = tmp_path / "b1-model"
    assert main(["calibrate", "--dataset", str(tmp_path / "ds"), "--subject", "b1", "--out", str(out),
                 "--epochs", "2", "--batch-size", "8", "--sd-vae", str(vae_file)]) == 0
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "training.json").read_text())
    assert config["blurry"] is True
    scores = summary["evaluation"]["blurry"]
    assert scores["l1"] > 0 and -1 <= scores["pearson"] <= 1 and 0 <= scores["two_way"] <= 1
    assert np.load(out / "history.npz")["blurry"].min() > 0
    report = (out / "report" / "report.md").read_text()
    assert "## Blurry branch (held out)" in report
    cached = list((out / "embedding-cache").glob("sd-vae-*/*.npy"))
    assert cached and np.load(cached[0]).shape == (4, 28, 28)  # targets are cached per image like tokens

    StimulusSet().save(tmp_path / "gallery", range(8))
    decoder = Decoder.from_folder(out, tmp_path / "gallery", device="cpu", sd_vae=vae_file)
    ret = decoder.retrieve(np.random.default_rng(1).normal(size=110).astype(np.float32))
    assert ret.blurry_latent.shape == (4, 28, 28)
    image, _ = decoder.reconstruct(ret.tokens, ret.blurry_latent)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
