"""MindEye2's claim on the simulator: with one hour of a new person's data, fine-tuning a model
pretrained on other people beats training from scratch on the same hour, in held-out retrieval."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_pretrained_then_fine_tuned_beats_scratch_on_one_simulated_hour(tmp_path):
    from calibration.build import calibrate, load_trial_dataset, pretrain
    from calibration.report import write_report
    from calibration.trainer import TrainConfig
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    latent = LatentSpace(dim=32)
    # Three people pretrain (one NSD-like session each, 693 trials); a fourth brings one hour:
    # 11 runs of 63 trials, 50 images shown 3 times held out (543 trials to train on).
    others = [SubjectSpec(name=f"p{i}", n_voxels=600 + 37 * i, seed=i, latent_dim=32) for i in range(3)]
    new = SubjectSpec(name="new", n_voxels=611, seed=50, latent_dim=32)
    write_dataset(tmp_path / "others", others, sessions=1, latent=latent, seed=0)
    write_dataset(tmp_path / "new", [new], sessions=1, latent=latent, seed=1)
    cache = tmp_path / "cache"
    subjects = [load_trial_dataset(tmp_path / "others", s.name, cache).zscored() for s in others]
    pretrain(subjects, tmp_path / "shared", TrainConfig(epochs=10, batch_size=48, max_lr=1e-3, checkpoint_s=1e9))
    data = load_trial_dataset(tmp_path / "new", "new", cache)
    model = calibrate(data, tmp_path / "new-model", TrainConfig(epochs=10, batch_size=24, checkpoint_s=1e9),
                      pretrained=tmp_path / "shared", compare_scratch=True)
    summary = json.loads((model / "training.json").read_text())
    ours, scratch = summary["evaluation"], summary["scratch"]
    assert ours["held_out_images"] == scratch["held_out_images"] == 50 and ours["chance"] == 0.02

    def both_ways(e: dict) -> float:
        return (e["top1_brain_to_image"] + e["top1_image_to_brain"]) / 2

    # Measured here: 13 % vs 3 % (chance 2 %); the margin asked for is 5 points.
    assert both_ways(ours) >= both_ways(scratch) + 0.05, (ours, scratch)
    assert both_ways(ours) >= 3 * ours["chance"]
    report = write_report(model).read_text()
    assert "| from scratch, same data | 50 |" in report and "held_out_top5.png" in report
