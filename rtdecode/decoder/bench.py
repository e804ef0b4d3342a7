"""``rtdecode bench decoder``: brain -> CLIP tokens -> image at full size, random weights.

Random weights time the same as real ones. On a CPU the default is brain to tokens (ridge, backbone,
20-step prior) and retrieval; unCLIP (38 steps, CFG 5, 768 px) runs when a GPU is present or with
``--unclip``. On a GPU it also reports the peak memory of the whole decoder held at once.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from models.devices import build_on_device
from rtdecode.base.timing import summarize


def _timed(fn, repeats: int, sync) -> list[float]:
    ms = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def bench_decoder(hidden: int = 4096, n_voxels: int = 15724, repeats: int = 3, unclip: bool | None = None,
                  gallery: int = 300, seed: int = 0) -> dict:
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2
    from models.retrieval import similarity, top_k

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    unclip = cuda if unclip is None else unclip
    config = MindEye2Config(subjects=["subj01"], voxels=[n_voxels], hidden=hidden, blurry=hidden >= 4096)
    t0 = time.perf_counter()
    model = build_on_device(lambda: MindEye2(config), device, dtype, seed).eval()  # made on the device, not the host
    setup_s = time.perf_counter() - t0
    voxels = torch.randn(1, n_voxels, device=device, dtype=dtype)
    out: dict = {}

    def brain_to_tokens():
        with torch.no_grad():
            backbone, clip, _ = model(voxels, 0)
            out["tokens"] = model.diffusion_prior.sample(backbone, steps=20)
            out["clip"] = clip

    brain_ms = _timed(brain_to_tokens, repeats, sync)
    backbone_ms = _timed(lambda: model(voxels, 0), repeats, sync)
    gal = np.random.default_rng(seed).normal(size=(gallery, 256 * config.clip_dim)).astype(np.float32)
    retrieval_ms = _timed(lambda: top_k(similarity(out["clip"].float().cpu().numpy(), gal), 5), repeats, sync)
    result = {
        "stage": "decoder", "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
        "hidden": hidden, "voxels": n_voxels, "params": sum(p.numel() for p in model.parameters()),
        "setup_s": setup_s, "backbone_median_ms": summarize(backbone_ms)["median_ms"],
        "brain_to_tokens_median_ms": summarize(brain_ms)["median_ms"],
        "brain_to_tokens_max_ms": summarize(brain_ms)["max_ms"],
        "retrieval_300_median_ms": summarize(retrieval_ms)["median_ms"],
    }
    if unclip:
        from models.unclip.convert import UNetLayout
        from models.unclip.pipeline import UnclipReconstructor, build_modules

        unet, vae = build_on_device(lambda: torch.nn.ModuleList(build_modules(UNetLayout(), device=device)), device,
                                    dtype, seed + 1)
        vae.encoder, vae.quant_conv = None, None
        rec = UnclipReconstructor(unet, vae)
        image_ms = _timed(lambda: rec(out["tokens"].float()), max(1, repeats - 1), sync)
        result["tokens_to_image_median_ms"] = summarize(image_ms)["median_ms"]
    if cuda:
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result
