"""Projected GPU times from counted work: FLOPs (``torch.utils.flop_counter``) and bytes, on the meta device.

Nothing here measures a GPU. A projection is ``max(FLOPs / (peak x compute utilisation), bytes /
(bandwidth x bandwidth utilisation))``: the larger of the compute-bound and memory-bound times. Peaks
are the vendors' published dense bf16 tensor figures. The utilisations are stated assumptions
(docs/benchmarks.md gives their sources). Every printed line says "projected".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense (no sparsity), tensor cores, FP32 accumulate where the vendor says
    bandwidth_tbs: float  # memory bandwidth, TB/s
    memory_gb: float


# Vendors' datasheets: H100 SXM5 and H200 SXM (989.4 TFLOPS dense bf16; 3.35 and 4.8 TB/s), A100 80 GB
# SXM (312; 2.039 TB/s), L40S (362.05; 864 GB/s), RTX 4090 (165.2 with FP32 accumulate; 1,008 GB/s).
GPUS = (
    GPU("H100 SXM", 989.4, 3.35, 80),
    GPU("H200", 989.4, 4.8, 141),
    GPU("A100 80 GB", 312.0, 2.039, 80),
    GPU("L40S", 362.05, 0.864, 48),
    GPU("RTX 4090", 165.2, 1.008, 24),
)
# Model FLOPs utilisation reached by large dense training runs: 46.2 % (PaLM, Chowdhery et al. 2022) and
# 52 % (Megatron-LM on A100, Narayanan et al. 2021). We assume 40 % for both training and the batched
# diffusion steps. Batch-1 passes through large weights are bandwidth-bound; 60 % of the peak bandwidth is
# an assumption, not a cited measurement.
COMPUTE_UTILISATION = 0.40
BANDWIDTH_UTILISATION = 0.60


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` (matrix multiplies, convolutions, attention), counted by shape: meta tensors do."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (the activations a training
    step holds at its peak, before backward frees them)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def param_bytes(module: torch.nn.Module, bytes_per_param: int = 2) -> int:
    return sum(p.numel() for p in module.parameters()) * bytes_per_param


def project_seconds(flops: float, bytes_moved: float, gpu: GPU) -> float:
    compute = flops / (gpu.bf16_tflops * 1e12 * COMPUTE_UTILISATION)
    memory = bytes_moved / (gpu.bandwidth_tbs * 1e12 * BANDWIDTH_UTILISATION)
    return max(compute, memory)


def table(rows: list[tuple[str, float, float]], memory_gb: float | None = None) -> str:
    """Markdown: one row per stage (name, FLOPs, bytes moved), one column per GPU, in ms, "projected"."""
    head = "| stage (projected, not measured) | GFLOPs | GB moved | " + " | ".join(g.name for g in GPUS) + " |"
    lines = [head, "|" + " --- |" * (3 + len(GPUS))]
    for name, flops, moved in rows:
        cells = [f"{1e3 * project_seconds(flops, moved, g):,.1f} ms" for g in GPUS]
        lines.append(f"| {name} | {flops / 1e9:,.1f} | {moved / 1e9:.2f} | " + " | ".join(cells) + " |")
    if memory_gb is not None:
        lines.append("| memory needed (GB) | | | " + " | ".join(
            f"{memory_gb:.1f} {'fits' if memory_gb <= g.memory_gb else 'does not fit'}" for g in GPUS) + " |")
    return "\n".join(lines)
