"""Where random numbers and host arrays go: onto the device the model lives on.

A CUDA kernel refuses a CPU generator ("Expected a 'cuda' device type for generator"), and a draw made
on the host and copied over costs host time and a copy every step; so generators are made on the model's
device, and host arrays cross over once, without waiting for the device where it can be avoided.
"""

from __future__ import annotations

import numpy as np
import torch


def generator_on(device: torch.device | str, seed: int) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``; None on the meta device, which draws no numbers
    (its tensors hold none) and has no generator to make."""
    device = torch.device(device)
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def to_device(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array on ``device``. To a GPU the copy goes through pinned memory without blocking, so the host
    does not wait for the device's queued work (a pageable copy waits for the stream to drain)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x)  # torch refuses to share a read-only buffer (wire arrays, memory maps)
    t = torch.as_tensor(x)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return t.to(device=device, dtype=dtype)


def build_on_device(make, device: torch.device | str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """``make()`` with ``device`` as the default device: every weight and buffer is created and initialised
    there (PyTorch's own init schemes, seeded), then cast to ``dtype``; nothing is made on the host first
    (round 2's benches drew 4.8 billion weights on the host, 20-130 s, before copying them over)."""
    torch.manual_seed(seed)
    with torch.device(device):
        module = make()
    return module.to(dtype=dtype)
