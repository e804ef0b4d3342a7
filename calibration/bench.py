"""``rtdecode bench calibrate``: training steps per second at full size (random weights, synthetic betas)."""

from __future__ import annotations

import time

import torch

from rtdecode.timing import summarize


def bench_calibrate(hidden: int | None = None, n_voxels: int = 15724, steps: int = 3, batch: int | None = None,
                    seed: int = 0) -> dict:
    """Full-size MindEye2 (256 x 1664 tokens, prior 6 x 1664, the blurry branch) forward + backward +
    AdamW step at batch 24: SoftCLIP + 30 x prior MSE + 0.5 x blurry L1, as the published fine-tuning.

    On a CPU the 4096-hidden model does not fit 24 GB with AdamW's state, and batch 24 of the 1024 one
    runs out of memory in the prior's attention, so the CPU default is 1024 hidden at batch 4; a GPU
    runs 4096 at batch 24 in bf16 autocast. Also projects the one-hour recipe: 150 epochs
    of 31 steps (750 trials per session, batch 24).
    """
    from calibration.losses import flat_unit, soft_clip_loss
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    hidden = hidden or (4096 if cuda else 1024)
    batch = batch or (24 if cuda else 4)
    torch.manual_seed(seed)
    model = MindEye2(MindEye2Config(subjects=["s"], voxels=[n_voxels], hidden=hidden, blurry=True)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2, foreach=True)
    x = torch.randn(batch, n_voxels, device=device)
    y = torch.randn(batch, 256, 1664, device=device)
    latent = torch.randn(batch, 4, 28, 28, device=device)  # cached VAE targets: the VAE is not in the step
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ms = []
    for _ in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            backbone, clip, (blur, _) = model(x, 0)
            loss = soft_clip_loss(flat_unit(clip.float()), flat_unit(y), 0.005)
            prior, _ = model.diffusion_prior.loss(y, backbone.float())
            loss = loss + 30 * prior + 0.5 * torch.nn.functional.l1_loss(blur.float(), latent)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    s = summarize(ms[1:])  # the first step allocates the optimiser state
    recipe_steps = 150 * 31
    result = {"stage": "calibrate", "device": torch.cuda.get_device_name() if cuda else "cpu", "hidden": hidden,
              "params": sum(p.numel() for p in model.parameters()), "batch": batch,
              "step_median_ms": s["median_ms"], "steps_per_s": 1000 / s["median_ms"],
              "one_hour_recipe_steps": recipe_steps,
              # at batch 24; a smaller measured batch is scaled up linearly (an optimistic bound on a CPU)
              "one_hour_recipe_projected_min": recipe_steps * s["median_ms"] * (24 / batch) / 60000}
    if cuda:
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result
