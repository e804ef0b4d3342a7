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
    from rtdecode.tools.gpu_bench import project_captions_and_refinement

    out = project_captions_and_refinement(decoder_gb=9.56)
    memory = out["memory_with_refinement"]
    assert memory["total_gb"] == sum(memory["parts_gb"].values())
    assert memory["within_target"] and memory["target_gb"] == 24.0
    assert "projected" in out["refine"]["markdown"] and "within the 24 GB target" in memory["markdown"]
    over = 24.0 - memory["parts_gb"]["captioner (GIT text decoder, bigG_to_L)"] - out["refine"]["weights_bf16_gb"] + 0.1
    assert not project_captions_and_refinement(decoder_gb=over)["memory_with_refinement"]["within_target"]


def test_bench_gpu_times_a_caption_and_a_refinement_with_both_held():
    """The measuring path of ``rtdecode bench gpu`` walked on the CPU at the tiny sizes (on CUDA it runs at
    the published sizes); each measured figure sits beside its projection for the same GPU."""
    import torch

    from rtdecode.tools.gpu_bench import bench_caption_refine, beside

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench_caption_refine(torch.device("cpu"), torch.float32, tiny=True, repeats=2, warmup=1)
    finally:
        torch.set_num_threads(before)
    assert result["caption_ms_median"] > 0 and result["refine_ms_median"] > 0 and result["repeats"] == 2
    assert 0 < result["caption_words"] <= 19 and result["peak_memory_gb"] is None  # no CUDA: no peak
    measured = {"decoder": {"peak_memory_gb": 10.0},
                "caption_refine": {"caption_ms_median": 3.0, "refine_ms_median": 300.0, "peak_memory_gb": 8.0}}
    projected = {"caption": {"ms": {"H100 SXM": {"caption, all of it": 1.7}}, "weights_bf16_gb": 0.19},
                 "refine": {"ms": {"H100 SXM": {"refinement, all of it": 242.5}}, "weights_bf16_gb": 6.94},
                 "memory_with_refinement": {"total_gb": 16.7}}
    table = beside(measured, projected, "NVIDIA H100 80GB HBM3")
    assert "| a caption (GIT, 20 tokens, greedy) | 3.0 ms | 1.7 ms | - |" in table
    assert "| a refinement (SDXL, 12 of 25 steps, 768 px) | 300.0 ms | 242.5 ms | - |" in table
    assert "| decoder with both loaded, at most (the two peaks added) | 18.0 GB | 16.7 GB (weights) | 24 GB |" in table
