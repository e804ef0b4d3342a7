"""Calibration core: the published losses, and a trainer that resumes after a crash without losing steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibration.data import SubjectData, average_repeats, split_by_image
from calibration.losses import mixco, mixco_nce, soft_clip_loss, soft_temperatures
from calibration.trainer import TrainConfig, train
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2


def test_losses_follow_the_published_definitions():
    torch.manual_seed(0)
    preds, targets = F.normalize(torch.randn(6, 10), dim=-1), F.normalize(torch.randn(6, 10), dim=-1)
    ones = torch.ones(6)
    # Unmixed (lambda = 1), BiMixCo is plain two-way InfoNCE.
    sim = preds @ targets.T / 0.006
    expected = (F.cross_entropy(sim, torch.arange(6)) + F.cross_entropy(sim.T, torch.arange(6))) / 2
    assert torch.allclose(mixco_nce(preds, targets, torch.arange(6), ones), expected)
    assert soft_clip_loss(targets, targets, 0.004) < soft_clip_loss(preds, targets, 0.004)
    temps = soft_temperatures(11)
    assert temps[0] == pytest.approx(0.004) and temps[-1] == pytest.approx(0.0075)
    voxels = torch.randn(200, 7)
    mixed, perm, lam = mixco(voxels.clone(), np.random.default_rng(1))
    unmixed = lam == 1
    assert 0.3 < unmixed.float().mean() < 0.7  # about half are mixed (s_thresh 0.5)
    assert torch.allclose(mixed[unmixed], voxels[unmixed])
    assert torch.allclose(mixed[~unmixed], voxels[~unmixed] * lam[~unmixed, None] + voxels[perm][~unmixed] * (1 - lam[~unmixed, None]))


def _toy(n: int = 96, v: int = 30, seed: int = 0) -> SubjectData:
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, 4, 8)).astype(np.float32)
    betas = tokens.reshape(n, -1) @ rng.normal(size=(32, v)) + rng.normal(0, 0.5, (n, v))
    return SubjectData("s1", betas.astype(np.float32), [f"im{i % 40}" for i in range(n)], tokens).zscored()


def _model(v: int = 30) -> MindEye2:
    torch.manual_seed(0)
    return MindEye2(MindEye2Config(subjects=["s1"], voxels=[v], hidden=16, n_blocks=1, clip_tokens=4, clip_dim=8,
                                   blurry=False, prior_depth=1, prior_dim_head=4))


@pytest.mark.parametrize(("n", "epochs", "batch"), [(17, 1, 8), (17, 2, 16), (40, 1, 8)])
def test_a_run_of_very_few_steps_trains(n, epochs, batch):
    # 2, 2 and 5 steps: torch's one-cycle schedule divides by its warm-up's length, 0 steps in the first two.
    data = _toy(n=n)
    history = train(_model(), [data], TrainConfig(epochs=epochs, batch_size=batch))
    assert history["steps"] == history["total_steps"] == n // batch * epochs
    assert np.isfinite(history["loss"]).all()


def test_split_by_image_keeps_repeats_together():
    data = _toy()
    train_set, val = split_by_image(data, {"im0", "im1"})
    assert set(val.images) == {"im0", "im1"} and not set(train_set.images) & {"im0", "im1"}
    assert len(average_repeats(val).betas) == 2


def test_training_resumes_after_a_crash_with_the_same_number_of_steps(tmp_path):
    data = _toy()
    config = TrainConfig(epochs=4, batch_size=16, checkpoint_s=0.0)
    full = train(_model(), [data], config, out=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash_at_9(step, total, loss):
        if step == 9:
            raise Crash

    model = _model()
    with pytest.raises(Crash):
        train(model, [data], config, out=tmp_path / "cut", progress=crash_at_9)
    resumed = train(_model(), [data], config, out=tmp_path / "cut", resume=True)
    assert full["steps"] == resumed["steps"] == full["total_steps"] == 24
    assert len(resumed["loss"]) == 24  # the history before the crash came back with the checkpoint
    assert resumed["loss"][-1] < resumed["loss"][0]
    # Batches, mixing, prior noise and dropout all continue where they stopped: the same run.
    assert np.allclose(resumed["loss"], full["loss"], rtol=1e-5)


def test_pretrain_then_calibrate_then_decode(tmp_path, latent_space):
    """Simulated dataset -> rtdecode pretrain -> rtdecode calibrate -> a model folder the decoder loads."""
    from rtdecode.cli import main
    from rtdecode.decoder.core import Decoder
    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    specs = [SubjectSpec(name=f"p{i}", n_voxels=120 + 10 * i, seed=30 + i, latent_dim=32) for i in range(3)]
    write_dataset(tmp_path / "ds", specs[:2], sessions=1, n_runs=2, trials_per_run=30, latent=latent_space)
    # The new person's held-out (repeated) images come from the test pool no pretraining subject saw.
    write_dataset(tmp_path / "new", specs[2:], sessions=1, n_runs=2, trials_per_run=30, latent=latent_space, role="new")
    assert main(["pretrain", "--dataset", str(tmp_path / "ds"), "--subjects", "p0", "p1", "--out",
                 str(tmp_path / "shared"), "--epochs", "2", "--batch-size", "16"]) == 0
    assert main(["calibrate", "--dataset", str(tmp_path / "new"), "--subject", "p2", "--pretrained",
                 str(tmp_path / "shared"), "--out", str(tmp_path / "p2-model"), "--epochs", "2", "--batch-size", "8"]) == 0
    folder = tmp_path / "p2-model"
    assert {"model.safetensors", "config.json", "embedder.json", "subject.json", "zscore_mean.npy",
            "training.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "training.json").read_text())
    assert summary["evaluation"]["held_out_images"] > 0 and summary["steps"] > 0
    assert summary["held_out_overlap"] == {"pretraining": 0, "calibration": 0}
    StimulusSet().save(tmp_path / "gallery", range(10))
    decoder = Decoder.from_folder(folder, tmp_path / "gallery", device="cpu")
    assert decoder.model.config.subjects == ["p0", "p1", "p2"]
    ret = decoder.retrieve(np.zeros(140, np.float32))
    assert ret.tokens.shape == (16, 64) and len(ret.ids) == 5


def test_progress_line_shows_step_loss_and_eta():
    import io

    from calibration.progress import Progress

    out = io.StringIO()
    bar = Progress("calibrating", stream=out, every_s=0.0)
    bar(5, 20, 1.2345)
    bar(20, 20, 0.5)
    text = out.getvalue()
    assert "step 5/20 (25%) loss 1.234 ETA" in text and text.endswith("(100%) loss 0.500 ETA 0:00\n")


@pytest.mark.long  # 1-3 minutes each: make long (CI runs it), not the 10-minute suite
def test_calibration_killed_with_sigkill_and_resumed_is_the_uninterrupted_run_bit_for_bit(tmp_path, latent_space):
    """Every step's loss and the final weights equal the uninterrupted run's exactly (CPU). Round 2's
    start checked only the step count, which a resume that ignores its checkpoint also reaches."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    write_dataset(tmp_path / "ds", [SubjectSpec(name="k1", n_voxels=90, seed=3, latent_dim=32)], sessions=1, n_runs=2,
                  trials_per_run=40, latent=latent_space)
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}

    def cmd(out, *extra):
        return [sys.executable, "-m", "rtdecode.cli", "calibrate", "--dataset", str(tmp_path / "ds"), "--subject", "k1",
                "--out", str(out), "--epochs", "15", "--batch-size", "8", "--checkpoint-s", "0", "--no-report", *extra]

    subprocess.run(cmd(tmp_path / "whole"), env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(cmd(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoints" / "checkpoint.pt"
    deadline, step = time.monotonic() + 120, 0
    while time.monotonic() < deadline and step < 37:  # somewhere in the fifth epoch, mid-epoch
        time.sleep(0.02)
        try:
            step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
        except (FileNotFoundError, RuntimeError, EOFError, KeyError):
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stopped = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    assert 37 <= stopped < 105 and not (tmp_path / "cut" / "training.json").exists()  # killed mid-run
    resumed = subprocess.run(cmd(tmp_path / "cut", "--resume"), env=env, check=True, capture_output=True, text=True,
                             timeout=300)
    assert f"resumed at step {stopped} of 105" in resumed.stderr  # it went on from the checkpoint, not from 0
    whole, cut = (np.load(tmp_path / name / "history.npz") for name in ("whole", "cut"))
    assert len(whole["loss"]) == len(cut["loss"]) == 105
    for key in ("loss", "clip", "prior"):
        assert np.array_equal(whole[key], cut[key]), key
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_fast_path_changes_the_memory_not_the_model():
    """Activation checkpointing gives the very same training run and keeps fewer activations; fused AdamW
    the same run within Adam's step size (bf16 autocast, the third part, applies on a GPU only)."""
    from models.projection import saved_bytes

    data = _toy()

    def run(config: TrainConfig) -> tuple[MindEye2, dict]:
        model = _model()
        return model, train(model, [data], config)

    base = dict(epochs=2, batch_size=16, checkpoint_s=1e9)
    plain, a = run(TrainConfig(**base))
    fast, b = run(TrainConfig.fast(cuda=False, **base))
    assert TrainConfig.fast(cuda=False).precision == "no" and TrainConfig.fast(cuda=True).precision == "bf16"
    assert b["loss"] == a["loss"]  # checkpointing recomputes the same numbers
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(), fast.state_dict().values(), strict=True))
    # Fused AdamW orders its arithmetic differently: where a gradient is nearly zero the update's sign can
    # flip, so parameters may differ by up to one step size per step, and the losses barely at all.
    fused, c = run(TrainConfig(fused_adam=True, **base))
    np.testing.assert_allclose(c["loss"], a["loss"], rtol=1e-4)
    bound = a["steps"] * TrainConfig().max_lr
    assert all(float((p - q).abs().max()) <= bound
               for p, q in zip(plain.state_dict().values(), fused.state_dict().values(), strict=True))
    # Checkpointing trades kept activations for recomputation: fewer bytes saved for backward, same gradients.
    model = MindEye2(MindEye2Config(subjects=["s1"], voxels=[30], hidden=16, n_blocks=2, clip_tokens=4, clip_dim=8,
                                    blurry=False, prior_depth=2, prior_dim_head=4)).train()
    x, y = torch.randn(6, 30), torch.randn(6, 4, 8)

    def step():
        torch.manual_seed(1)  # the same dropout masks in every call
        backbone, clip, _ = model(x, 0)
        prior, _ = model.diffusion_prior.loss(y, backbone, generator=torch.Generator().manual_seed(0))
        return clip.square().mean() + prior

    full = saved_bytes(step)
    grads = torch.autograd.grad(step(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    model.activation_checkpointing(True)
    kept = saved_bytes(step)
    again = torch.autograd.grad(step(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert kept < full / 2
    for g, h in zip(grads, again, strict=True):
        if g is not None:
            torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-6)
