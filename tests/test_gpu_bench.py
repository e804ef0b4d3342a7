"""rtdecode bench gpu, off a GPU: tiny sizes through the same code with device='cpu' walk every line that
does not need CUDA (weights made on the device, Decoder.decode timed after warm-up, the trainer's own loop
timed between its read-backs, one JSON object and the table beside the projections)."""

from __future__ import annotations

import json

import numpy as np
import torch
from test_device_discipline import DeviceDiscipline
from test_unclip import TINY, TINY_VAE

from models.devices import build_on_device
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2
from rtdecode.tools.gpu_bench import Sizes, bench_gpu, beside


def _tiny() -> Sizes:
    config = MindEye2Config(subjects=["s"], voxels=[40], hidden=32, n_blocks=2, clip_tokens=5, clip_dim=24,
                            blurry=False, prior_depth=1, prior_dim_head=8)
    return Sizes(config=config, unet=TINY, vae_channels=TINY_VAE, unclip_steps=3, image_size=64, gallery=7,
                 trials=48, batch=8)


def test_weights_are_made_and_drawn_on_the_device_they_live_on():
    config = _tiny().config
    with DeviceDiscipline("meta") as mode:
        build_on_device(lambda: MindEye2(config), "meta", torch.float32, seed=0)
    assert mode.faults == [] and mode.draws >= 2 * config.n_blocks * 2  # every init drawn there, none on the host
    made = [build_on_device(lambda: MindEye2(config), "cpu", torch.bfloat16, seed=3).state_dict() for _ in range(2)]
    assert {t.device.type for t in made[0].values()} == {"cpu"}
    assert next(iter(made[0].values())).dtype == torch.bfloat16
    assert all(torch.equal(made[0][k], made[1][k]) for k in made[0])  # seeded, buffers computed as built


def test_bench_gpu_on_the_cpu_times_decode_and_the_trainer_loop_and_prints_one_json_object(tmp_path, capsys):
    report = bench_gpu(out=tmp_path, device="cpu", sizes=_tiny(), calibrate_steps=6, repeats=5, warmup=2,
                       project=False)
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[0]) == json.loads(json.dumps(report, default=str))  # one JSON object, first
    assert json.loads((tmp_path / "gpu.json").read_text()) == json.loads(printed[0])
    assert report["device"] == "cpu" and report["cuda"] is False
    decoder, calibrate = report["decoder"], report["calibrate"]
    assert decoder["repeats"] == 5 and decoder["warmup"] == 2 and decoder["image_shape"] == [64, 64, 3]
    for stage in ("decode", "backbone", "retrieval", "prior", "reconstruction"):
        assert np.isfinite(decoder[f"{stage}_ms_median"])
    assert decoder["tokens_to_image_ms_median"] == decoder["reconstruction_ms_median"]
    assert decoder["peak_memory_gb"] is None  # CUDA's counter only
    # 6 steps an epoch, read back every 2: 2 epochs, 6 read-backs; the interval after the first is timed.
    assert calibrate["steps_run"] == 12 and calibrate["log_every"] == 2 and calibrate["timed_intervals"] == 4
    assert calibrate["finite_losses"] and calibrate["recipe_min"] == 4650 * calibrate["step_ms_median"] / 60000
    table = (tmp_path / "gpu.md").read_text()
    assert "## Measured on cpu beside the projections" in table and "| Decoder.decode end to end |" in table
    assert "projected (no matching GPU)" in table


def test_measured_figures_sit_beside_the_projection_of_the_same_gpu():
    measured = {"decoder": {"brain_to_tokens_ms_median": 20.0, "tokens_to_image_ms_median": 900.0,
                            "decode_ms_median": 950.0, "peak_memory_gb": 11.0},
                "calibrate": {"step_ms_median": 70.0, "recipe_min": 5.4, "peak_memory_gb": 50.0}}
    projected = {"decoder": {"ms": {"H100 SXM": {"brain -> tokens (both above)": 12.2,
                                                 "tokens -> image (38 steps + decode)": 739.0}},
                             "weights_bf16_gb": 9.6},
                 "calibrate": {"step_ms": {"H100 SXM": 66.6}, "recipe_minutes": {"H100 SXM": 5.2}, "memory_gb": 45.9}}
    table = beside(measured, projected, "NVIDIA H100 80GB HBM3")
    assert "| brain -> tokens (ridge, backbone, retrieval, 20 prior steps) | 20.0 ms | 12.2 ms | 200 ms |" in table
    assert "| tokens -> image (unCLIP + VAE decode) | 900.0 ms | 739.0 ms | 2000 ms |" in table
    assert "| one-hour recipe (4,650 steps) | 5.4 min | 5.2 min | 10 min |" in table
    assert "projected (H100 SXM)" in table
