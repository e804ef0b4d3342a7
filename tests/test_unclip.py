"""SDXL unCLIP: the sgm-layout conversion agrees with diffusers' own converters; a tiny pipeline runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from models.unclip.convert import UNetLayout, convert_unet, convert_vae, to_sgm_unet, to_sgm_vae
from models.unclip.pipeline import (
    UnclipSettings,
    build_modules,
    convert_unclip,
    load_converted,
    load_unclip_checkpoint,
    sampling_sigmas,
)

TINY = UNetLayout(channels=(32, 64, 64), transformer_depth=(1, 2, 3), head_channels=16, context_dim=24,
                  adm_in_channels=32, time_embed_dim_per_value=8, sample_size=8)
TINY_VAE = (32, 32, 64, 64)


@pytest.fixture(scope="module")
def tiny_modules():
    torch.manual_seed(0)
    return build_modules(TINY, TINY_VAE, device="cpu")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_modules):
    """A tiny unCLIP file in the published layout: state_dict with model.diffusion_model.*,
    first_stage_model.* and a conditioner entry (the image tower the decoder never loads)."""
    unet, vae = tiny_modules
    state = {**to_sgm_unet(unet.state_dict(), TINY), **to_sgm_vae(vae.state_dict()),
             "conditioner.embedders.0.model.visual.proj": torch.zeros(3)}
    path = tmp_path_factory.mktemp("unclip") / "unclip6_epoch0_step110000.ckpt"
    torch.save({"state_dict": state, "global_step": 110000}, path)
    return path


def test_unet_names_agree_with_diffusers_own_ldm_converter(tiny_modules):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet, _ = tiny_modules
    original = unet.state_dict()
    sgm = to_sgm_unet(original, TINY)
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in sgm  # upsampler after an attention block
    assert "model.diffusion_model.label_emb.0.0.weight" in sgm
    theirs = convert_ldm_unet_checkpoint(sgm, dict(unet.config))
    ours = convert_unet(sgm, TINY)
    assert set(theirs) == set(ours) == set(original)
    assert all(torch.equal(ours[k], original[k]) and torch.equal(theirs[k], original[k]) for k in original)
    with pytest.raises(KeyError, match="has no counterpart"):
        convert_unet({**sgm, "model.diffusion_model.adapter.0.weight": torch.zeros(1)}, TINY)


def test_vae_names_agree_with_diffusers_own_ldm_converter(tiny_modules):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    _, vae = tiny_modules
    original = vae.state_dict()
    sgm = to_sgm_vae(original)
    assert sgm["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 convolutions in LDM
    theirs = convert_ldm_vae_checkpoint({k.removeprefix("first_stage_model."): v for k, v in sgm.items()}, dict(vae.config))
    ours = convert_vae(sgm)
    assert set(ours) == set(original) == set(theirs)
    assert all(torch.equal(ours[k], original[k]) for k in original)
    assert all(torch.equal(theirs[k].reshape(original[k].shape), original[k]) for k in original)


def test_published_sampler_sigmas():
    sigmas = sampling_sigmas(38)
    assert sigmas.shape == (39,) and sigmas[-1] == 0 and (torch.diff(sigmas) < 0).all()
    assert abs(float(sigmas[0]) - 14.61) < 0.01  # the largest SDXL training sigma


def test_tiny_unclip_reconstructs_an_image_end_to_end_on_the_cpu(tmp_path, tiny_ckpt):
    rec = load_unclip_checkpoint(tiny_ckpt, TINY, TINY_VAE)
    assert rec.vae.encoder is None  # only the decoder is kept
    rec.settings = UnclipSettings(steps=6, size=64)
    tokens = torch.randn(2, 5, 24)
    a = rec(tokens, generator=torch.Generator().manual_seed(1))
    b = rec(tokens, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1 and torch.equal(a, b)
    folder = convert_unclip(tiny_ckpt, tmp_path / "unclip-diffusers", TINY, TINY_VAE)
    again = load_converted(folder, TINY_VAE)
    again.settings = rec.settings
    assert torch.equal(again(tokens, generator=torch.Generator().manual_seed(1)), a)


def test_missing_or_foreign_unclip_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="rtdecode models download unclip"):
        load_unclip_checkpoint(tmp_path / "absent.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="expected a dict with 'state_dict'"):
        load_unclip_checkpoint(tmp_path / "list.ckpt")


def test_blurry_image_through_a_saved_sd_vae(tmp_path):
    from models.blurry import blurry_image, build_sd_vae, load_sd_vae

    torch.manual_seed(3)
    vae = build_sd_vae((32, 32, 64, 64), device="cpu")
    torch.save(vae.state_dict(), tmp_path / "sd_image_var_autoenc.pth")
    loaded = load_sd_vae(tmp_path / "sd_image_var_autoenc.pth", (32, 32, 64, 64))
    latent = torch.randn(2, 4, 28, 28)
    image = blurry_image(loaded, latent)
    assert image.shape == (2, 3, 224, 224) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(image, blurry_image(vae.eval(), latent))


def test_the_size_vector_is_mindeye2s_768_whatever_the_output_size(tiny_ckpt):
    rec = load_unclip_checkpoint(tiny_ckpt, TINY, TINY_VAE)
    rec.settings = UnclipSettings(steps=2, size=64)
    seen = []
    hook = rec.unet.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"]),
                                              with_kwargs=True)
    try:
        image = rec(torch.randn(1, 5, 24), generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert image.shape[-1] == 64 and seen  # the output size changes the latent only
    assert all(t.tolist() == [[768.0, 768.0, 0.0, 0.0]] * 2 for t in seen)  # conditional and unconditional
