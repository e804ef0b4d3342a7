"""The work of a caption and of a refinement counted at the published sizes on the meta device, projected,
and the decoder's bf16 weights with both loaded against the 24 GB target (rtdecode bench gpu)."""

from __future__ import annotations

import pytest

from models.caption.project import caption_rows
from models.refine.project import refine_rows, sdxl_modules


@pytest.mark.long  # SDXL at full size on the meta device: about 30 s on 2 shared cores (make long)
def test_a_refinement_is_mindeye2s_12_unet_steps_at_published_sdxl_sizes():
    unet, vae, text, text_2 = sdxl_modules()
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base 1.0's UNet, as published
    result = refine_rows()
    flops = {name: f for name, f, _ in result["rows"]}
    step = flops["SDXL UNet, one step with CFG (batch 2, 96 x 96 latent)"]
    assert flops["SDXL UNet, the last 12 of 25 steps"] == 12 * step
    assert flops["refinement, all of it"] == (flops["SDXL text encoders, caption + negative prompt"] + 12 * step
                                              + flops["SDXL VAE encode of the 768 px reconstruction"]
                                              + flops["SDXL VAE decode to 768 px"])
    assert 6.8 < result["weights_bf16_gb"] < 7.0  # 3.47 billion parameters: the 6.94 GB fp16 single file


def test_a_caption_is_one_pass_over_the_image_tokens_and_18_cached_steps():
    result = caption_rows()
    flops = {name: f for name, f, _ in result["rows"]}
    moved = {name: b for name, _, b in result["rows"]}
    first = flops["GIT: image tokens + start token (one pass)"]
    more = flops["GIT: 18 more tokens, cached (greedy, max_length 20)"]
    assert more < first  # 18 one-token passes cost less than one pass over 258 tokens
    assert moved["GIT: 18 more tokens, cached (greedy, max_length 20)"] == 18 * moved["GIT: image tokens + start token (one pass)"]
    # GIT-large-COCO without its ViT-L/14 encoder: the 6-layer text decoder, embeddings and visual projection
    assert 90e6 < result["params"] < 95e6


@pytest.mark.long
def test_bench_gpu_reports_the_decoder_with_refinement_against_24_gb():
    from rtdecode.gpu_bench import project_captions_and_refinement

    out = project_captions_and_refinement(decoder_gb=9.56)
    memory = out["memory_with_refinement"]
    assert memory["total_gb"] == sum(memory["parts_gb"].values())
    assert memory["within_target"] and memory["target_gb"] == 24.0
    assert "projected" in out["refine"]["markdown"] and "within the 24 GB target" in memory["markdown"]
    over = 24.0 - memory["parts_gb"]["captioner (GIT text decoder, bigG_to_L)"] - out["refine"]["weights_bf16_gb"] + 0.1
    assert not project_captions_and_refinement(decoder_gb=over)["memory_with_refinement"]["within_target"]
