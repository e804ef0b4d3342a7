"""GPU projections: FLOPs counted by shape on the meta device, projected with the stated formula."""

from __future__ import annotations

import json

import pytest
import torch

from models.projection import GPUS, count_flops, param_bytes, project_seconds, saved_bytes, table


def test_counted_work_is_exact_on_layers_whose_cost_is_known():
    with torch.device("meta"):
        layer = torch.nn.Linear(300, 70)
        x = torch.zeros(5, 300)
    assert count_flops(lambda: layer(x)) == 2 * 5 * 300 * 70  # a multiply and an add per weight and row
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * 2 * 5 * 300 * 70  # forward, grad of the weight
    x.requires_grad_(True)
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 5 * 300 * 70  # and of the input
    with torch.device("meta"):
        mlp = torch.nn.Sequential(torch.nn.Linear(300, 70), torch.nn.GELU(), torch.nn.Linear(70, 11))
    saved = saved_bytes(lambda: mlp(torch.zeros(5, 300, device="meta")))
    # Saved for backward: each layer's input, GELU's input, and the second weight (the first layer's weight
    # is needed only for a gradient of the input, which does not require one).
    assert saved == 4 * (5 * 300 + 2 * 5 * 70 + 70 * 11)
    assert param_bytes(mlp) == 2 * (300 * 70 + 70 + 70 * 11 + 11)


def test_projection_is_the_slower_of_compute_and_memory_and_says_projected():
    h100 = next(g for g in GPUS if g.name == "H100 SXM")
    compute = project_seconds(989.4e12 * 0.4, 0, h100)
    memory = project_seconds(0, 3.35e12 * 0.6, h100)
    assert compute == pytest.approx(1.0) and memory == pytest.approx(1.0)
    assert project_seconds(989.4e12 * 0.4, 2 * 3.35e12 * 0.6, h100) == pytest.approx(2.0)
    text = table([("a stage", 2e12, 1e9)], memory_gb=30)
    assert "projected, not measured" in text and "30.0 fits" in text and "30.0 does not fit" in text


@pytest.mark.long
def test_bench_gpu_without_cuda_writes_the_projections_and_measures_nothing(tmp_path):
    from rtdecode.tools.bench import bench_gpu

    result = bench_gpu(out=tmp_path, hidden=256)  # a small hidden size keeps the count quick; the UNet is full size
    assert result["cuda"] is False
    report = json.loads((tmp_path / "gpu.json").read_text())
    flops = report["projected"]["decoder"]["flops"]
    assert flops["brain -> tokens (both above)"] == flops["ridge + backbone (batch 1)"] + flops["diffusion prior, 20 steps"]
    step = flops["unCLIP UNet, one step with CFG (batch 2, 96 x 96 latent)"]
    assert flops["tokens -> image (38 steps + decode)"] == 38 * step + flops["VAE decode to 768 px"]
    assert report["projected"]["decoder"]["unet_params"] == 2_501_272_324  # the published layout
    assert "decoder" not in report and "Measured" not in (tmp_path / "gpu.md").read_text()
    assert report["projected"]["calibrate"]["step_tflops"] > 0
