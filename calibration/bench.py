"""``rtdecode bench calibrate``: training steps per second at full size (random weights, synthetic betas)."""

from __future__ import annotations

import time

import numpy as np
import torch

from rtdecode.base.timing import summarize

RECIPE_STEPS = 150 * 31  # the one-hour recipe: 150 epochs of 31 steps (750 trials, batch 24)


def recipe_loss(model, x: torch.Tensor, y: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The published fine-tuning loss: SoftCLIP + 30 x prior MSE + 0.5 x blurry L1."""
    from calibration.losses import flat_unit, soft_clip_loss

    backbone, clip, (blur, _) = model(x, 0)
    loss = soft_clip_loss(flat_unit(clip.float()), flat_unit(y), 0.005)
    prior, _ = model.diffusion_prior.loss(y, backbone.float())
    return loss + 30 * prior + 0.5 * torch.nn.functional.l1_loss(blur.float(), latent)


# Bytes each parameter moves per step on the fast path (bf16 autocast, fused AdamW): the optimiser reads the fp32
# weight, gradient and both moments and writes weight and moments back (28); autocast reads each fp32 weight and
# writes its bf16 copy (6); forward and backward read that copy at least once each (4); the fp32 gradient is
# written (4).
STEP_BYTES_PER_PARAM = {"fused AdamW": 28, "autocast's bf16 copy": 6, "bf16 weights read (forward, backward)": 4,
                        "fp32 gradient written": 4}
TARGET_MINUTES = 10.0
# Host time PyTorch's eager mode spends launching one op on a GPU: an assumption (a few to about ten microseconds
# is typical); it is not measured here, because ops on the meta device run Python reference kernels instead.
HOST_US_PER_OP = 10.0


def count_ops(fn) -> int:
    """The ATen ops ``fn`` dispatches (on a GPU, about one kernel launch each)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _median_ms(fn, repeats: int) -> float:
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(sorted(ms)[len(ms) // 2])


def measure_host_step(n_voxels: int = 15724, batch: int = 24, trials: int = 750, mixup_pct: float = 0.33,
                      repeats: int = 9, seed: int = 0) -> dict:
    """The host's share of one training step, measured on this CPU: the trainer's own ``StepFeeder`` at full
    size with its tables and draws on the meta device, where device work costs only its dispatch. Beside it,
    what round 2's loop did on the host instead: 10.2 M prior normals from a CPU generator and the targets
    gathered on the CPU (the copies to the device, which a GPU machine adds, are not counted)."""
    from calibration.trainer import StepFeeder, _batches
    from models.mindeye2.prior import BrainDiffusionPrior

    with torch.device("meta"):
        tables = [(torch.zeros(trials, n_voxels), torch.zeros(trials, 256, 1664), torch.zeros(trials, 4, 28, 28))]
        prior = BrainDiffusionPrior(depth=1)  # only its draws are used
    plan = _batches([trials], batch, np.random.default_rng(seed))
    feed = StepFeeder(tables, [0], prior, seed, mix_steps=1, temps=[0.005] * 2, device=torch.device("meta"))
    mixing = _median_ms(lambda: feed(plan[0], 0, 0), repeats)
    plain = _median_ms(lambda: feed(plan[1], 0, 1), repeats)
    host_table = torch.zeros(2 * batch, 256, 1664)  # a gather costs by the rows it copies, not the table's size
    rows = torch.from_numpy(np.random.default_rng(seed).permutation(2 * batch)[:batch])
    generator = torch.Generator().manual_seed(seed)
    noise = _median_ms(lambda: torch.randn((batch, 256, 1664), generator=generator), 3)
    gather = _median_ms(lambda: host_table[rows], 3)
    return {"host_step_ms": mixup_pct * mixing + (1 - mixup_pct) * plain, "host_mixing_step_ms": mixing,
            "host_plain_step_ms": plain, "round2_noise_on_cpu_ms": noise, "round2_gather_on_cpu_ms": gather}


def project_calibrate(hidden: int = 4096, n_voxels: int = 15724, batch: int = 24, trials: int = 750) -> dict:
    """One training step of the recipe counted at full size on the meta device (forward + backward), its
    saved activations and memory, projected onto named GPUs, plus the host time per step measured on this
    CPU (``measure_host_step``). Launching forward and backward's ops costs host time too (counted, at an
    assumed ``HOST_US_PER_OP``); it overlaps the device's work, as the loop never waits for the device
    between read-backs, so a step takes the longer of the two. The GPU is not measured."""
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2
    from models.projection import GPUS, count_flops, project_seconds, saved_bytes, table

    with torch.device("meta"):
        model = MindEye2(MindEye2Config(subjects=["s"], voxels=[n_voxels], hidden=hidden, blurry=True))
        x, y = torch.zeros(batch, n_voxels), torch.zeros(batch, 256, 1664)
        latent = torch.zeros(batch, 4, 28, 28)
    activations = saved_bytes(lambda: recipe_loss(model, x, y, latent)) / 2  # counted in fp32; bf16 autocast halves it
    model.activation_checkpointing(True)  # the fast path keeps only each block's input ...
    kept = saved_bytes(lambda: recipe_loss(model, x, y, latent)) / 2
    flops = count_flops(lambda: recipe_loss(model, x, y, latent).backward())  # ... and recomputes the rest
    ops = count_ops(lambda: recipe_loss(model, x, y, latent).backward())
    dispatch_ms = ops * HOST_US_PER_OP / 1e3
    host = measure_host_step(n_voxels, batch, trials)
    params = sum(p.numel() for p in model.parameters())
    tables = trials * (n_voxels + 256 * 1664 + 4 * 28 * 28) * 4  # betas, targets, blurry targets on the device
    per_step_data = 3 * batch * 256 * 1664 * 4  # the noise written, the targets gathered (read and written)
    step_bytes = sum(STEP_BYTES_PER_PARAM.values()) * params + per_step_data
    state_gb, cache_gb = 16 * params / 1e9, 2 * params / 1e9  # fp32 weights, gradients, moments; bf16 copies
    memory_gb = state_gb + cache_gb + kept / 1e9 + tables / 1e9
    device_ms = {g.name: 1e3 * project_seconds(flops, step_bytes, g) for g in GPUS}
    step_ms = {name: max(ms, dispatch_ms) + host["host_step_ms"] for name, ms in device_ms.items()}
    minutes = {name: RECIPE_STEPS * ms / 60000 for name, ms in step_ms.items()}
    rows = [(f"one training step (batch {batch}, forward + recompute + backward), device", flops, step_bytes)]
    h100 = minutes["H100 SXM"]
    lines = [
        "| host per step, measured on this CPU (feeding the step; not overlapped) | | | "
        + " | ".join(f"{host['host_step_ms']:.1f} ms" for _ in GPUS) + " |",
        f"| one step, projected: max(device, {ops:,} op launches x {HOST_US_PER_OP:.0f} us = {dispatch_ms:.0f} ms) + host | | | "
        + " | ".join(f"{ms:,.1f} ms" for ms in step_ms.values()) + " |",
        "| one-hour recipe (4,650 steps), minutes | | | " + " | ".join(f"{m:.1f}" for m in minutes.values()) + " |",
    ]
    verdict = (f"One-hour calibration projected at {h100:.1f} min on an H100 SXM against the {TARGET_MINUTES:.0f}-minute "
               f"target: {'met' if h100 <= TARGET_MINUTES else 'missed'} (projected, not measured).")
    note = (f"\n\nMemory: fp32 weights, gradients and AdamW moments (16 bytes per parameter, {state_gb:.1f} GB), "
            f"autocast's bf16 weight copies ({cache_gb:.1f} GB), the activations saved for backward in bf16 with "
            f"checkpointing ({kept / 1e9:.1f} GB; {activations / 1e9:.1f} GB without) and the training tables on the "
            f"device ({tables / 1e9:.2f} GB). Traffic: {sum(STEP_BYTES_PER_PARAM.values())} bytes per parameter per "
            f"step ({', '.join(f'{k} {v}' for k, v in STEP_BYTES_PER_PARAM.items())}). Host, measured on this CPU: "
            f"{host['host_step_ms']:.1f} ms a step to feed it (round 2's loop: {host['round2_noise_on_cpu_ms']:.0f} ms "
            f"of prior noise and {host['round2_gather_on_cpu_ms']:.0f} ms of target gathering on the CPU, now on the "
            f"device); forward and backward launch {ops:,} ops ({dispatch_ms:.0f} ms at an assumed {HOST_US_PER_OP:.0f} us each), "
            f"overlapped with the device's work.\n\n{verdict}")
    return {"stage": "calibrate projection (meta device, counted; projected, not measured)", "hidden": hidden,
            "batch": batch, "params": params, "step_tflops": flops / 1e12, "step_bytes_gb": step_bytes / 1e9,
            "optimizer_state_gb": state_gb, "autocast_cache_gb": cache_gb, "tables_gb": tables / 1e9,
            "activations_bf16_gb": activations / 1e9, "activations_checkpointed_bf16_gb": kept / 1e9,
            "memory_gb": memory_gb, "ops_per_step": ops, "host_dispatch_ms": dispatch_ms, **host, "device_step_ms": device_ms,
            "step_ms": step_ms, "recipe_minutes": minutes, "target_minutes": TARGET_MINUTES, "verdict": verdict,
            "markdown": table(rows, memory_gb=memory_gb) + "\n" + "\n".join(lines) + note}


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
