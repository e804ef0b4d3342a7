"""``rtdecode bench calibrate``: training steps per second at full size (random weights, synthetic betas)."""

from __future__ import annotations

import time

import torch

from rtdecode.timing import summarize

RECIPE_STEPS = 150 * 31  # the one-hour recipe: 150 epochs of 31 steps (750 trials, batch 24)


def recipe_loss(model, x: torch.Tensor, y: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The published fine-tuning loss: SoftCLIP + 30 x prior MSE + 0.5 x blurry L1."""
    from calibration.losses import flat_unit, soft_clip_loss

    backbone, clip, (blur, _) = model(x, 0)
    loss = soft_clip_loss(flat_unit(clip.float()), flat_unit(y), 0.005)
    prior, _ = model.diffusion_prior.loss(y, backbone.float())
    return loss + 30 * prior + 0.5 * torch.nn.functional.l1_loss(blur.float(), latent)


def project_calibrate(hidden: int = 4096, n_voxels: int = 15724, batch: int = 24) -> dict:
    """One training step of the recipe counted at full size on the meta device (forward + backward), its
    saved activations and optimiser memory, projected onto named GPUs; nothing is measured."""
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2
    from models.projection import (
        GPUS,
        count_flops,
        param_bytes,
        project_seconds,
        saved_bytes,
        table,
    )

    with torch.device("meta"):
        model = MindEye2(MindEye2Config(subjects=["s"], voxels=[n_voxels], hidden=hidden, blurry=True))
        x, y = torch.zeros(batch, n_voxels), torch.zeros(batch, 256, 1664)
        latent = torch.zeros(batch, 4, 28, 28)
    activations = saved_bytes(lambda: recipe_loss(model, x, y, latent)) / 2  # counted in fp32; bf16 autocast halves it
    model.activation_checkpointing(True)  # the fast path keeps only each block's input ...
    kept = saved_bytes(lambda: recipe_loss(model, x, y, latent)) / 2
    flops = count_flops(lambda: recipe_loss(model, x, y, latent).backward())  # ... and recomputes the rest
    params = param_bytes(model, 1)
    state_gb = 16 * params / 1e9  # fp32 weights and gradients, AdamW's two moments
    memory_gb = state_gb + kept / 1e9
    step_bytes = 16 * params  # every step reads and writes the weights, gradients and moments
    rows = [(f"one training step (batch {batch}, forward + recompute + backward)", flops, step_bytes)]
    minutes = {g.name: RECIPE_STEPS * project_seconds(flops, step_bytes, g) / 60 for g in GPUS}
    recipe = "| one-hour recipe (4,650 steps), minutes | | | " + " | ".join(f"{m:.1f}" for m in minutes.values()) + " |"
    return {"stage": "calibrate projection (meta device, counted; projected, not measured)", "hidden": hidden,
            "batch": batch, "params": params, "step_tflops": flops / 1e12, "optimizer_state_gb": state_gb,
            "activations_bf16_gb": activations / 1e9, "activations_checkpointed_bf16_gb": kept / 1e9,
            "recipe_minutes": minutes,
            "markdown": table(rows, memory_gb=memory_gb) + "\n" + recipe + "\n\nMemory: fp32 weights, gradients and "
                        f"AdamW moments (16 bytes per parameter) plus the activations saved for backward in bf16 with "
                        f"activation checkpointing ({kept / 1e9:.1f} GB; {activations / 1e9:.1f} GB without)."}


def bench_calibrate(hidden: int | None = None, n_voxels: int = 15724, steps: int = 3, batch: int | None = None,
                    seed: int = 0) -> dict:
    """Full-size MindEye2 (256 x 1664 tokens, prior 6 x 1664, the blurry branch) forward + backward +
    AdamW step at batch 24: SoftCLIP + 30 x prior MSE + 0.5 x blurry L1, as the published fine-tuning.

    On a CPU the 4096-hidden model does not fit 24 GB with AdamW's state, and batch 24 of the 1024 one
    runs out of memory in the prior's attention, so the CPU default is 1024 hidden at batch 4; a GPU
    runs 4096 at batch 24 in bf16 autocast. Also projects the one-hour recipe: 150 epochs
    of 31 steps (750 trials per session, batch 24).
    """
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    hidden = hidden or (4096 if cuda else 1024)
    batch = batch or (24 if cuda else 4)
    torch.manual_seed(seed)
    model = MindEye2(MindEye2Config(subjects=["s"], voxels=[n_voxels], hidden=hidden, blurry=True)).to(device)
    # On a GPU, the fast path (TrainConfig.fast): fused AdamW, activation checkpointing, bf16 autocast below.
    model.activation_checkpointing(cuda)
    kernel = {"fused": True} if cuda else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2, **kernel)
    x = torch.randn(batch, n_voxels, device=device)
    y = torch.randn(batch, 256, 1664, device=device)
    latent = torch.randn(batch, 4, 28, 28, device=device)  # cached VAE targets: the VAE is not in the step
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ms = []
    for _ in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = recipe_loss(model, x, y, latent)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    s = summarize(ms[1:])  # the first step allocates the optimiser state
    result = {"stage": "calibrate", "device": torch.cuda.get_device_name() if cuda else "cpu", "hidden": hidden,
              "params": sum(p.numel() for p in model.parameters()), "batch": batch,
              "step_median_ms": s["median_ms"], "steps_per_s": 1000 / s["median_ms"],
              "one_hour_recipe_steps": RECIPE_STEPS,
              # at batch 24; a smaller measured batch is scaled up linearly (an optimistic bound on a CPU)
              "one_hour_recipe_projected_min": RECIPE_STEPS * s["median_ms"] * (24 / batch) / 60000}
    if cuda:
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result
