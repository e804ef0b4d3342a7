"""MindEye2's claim on the simulator, measured on images no model has seen: one hour of a new
person's data, a model pretrained on other people then fine-tuned, and one trained from scratch."""

from __future__ import annotations

import json

import pytest


@pytest.mark.claim  # with the claim in make claim (CI runs it after make test): keeps make test under 10 minutes
@pytest.mark.slow
def test_the_claim_is_measured_on_images_no_model_saw(tmp_path):
    """Held-out images come from the built-in test pool, which no pretraining subject was shown.

    Whether pretraining beats scratch on such images is not established yet (docs/calibration.md,
    "The claim on the simulator"): this test holds what is measured, that the comparison is made on
    disjoint images and that the fine-tuned model retrieves unseen images well above chance. On round
    2's start 44 of these 50 held-out images were pretraining targets."""
    from calibration.build import calibrate, load_trial_dataset, pretrain
    from calibration.report import write_report
    from calibration.splits import read_training_images
    from calibration.trainer import TrainConfig
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    latent = LatentSpace(dim=32)
    # Three people pretrain (one NSD-like session each, 693 trials, no test-pool image); a fourth brings
    # one hour: 11 runs of 63 trials, 50 test-pool images shown 3 times and held out (543 trials to train on).
    others = [SubjectSpec(name=f"p{i}", n_voxels=600 + 37 * i, seed=i, latent_dim=32) for i in range(3)]
    new = SubjectSpec(name="new", n_voxels=611, seed=50, latent_dim=32)
    write_dataset(tmp_path / "others", others, sessions=1, latent=latent, seed=0)
    write_dataset(tmp_path / "new", [new], sessions=1, latent=latent, seed=1, role="new")
    cache = tmp_path / "cache"
    subjects = [load_trial_dataset(tmp_path / "others", s.name, cache).zscored() for s in others]
    pretrain(subjects, tmp_path / "shared", TrainConfig(epochs=10, batch_size=48, max_lr=1e-3, checkpoint_s=1e9))
    data = load_trial_dataset(tmp_path / "new", "new", cache)
    model = calibrate(data, tmp_path / "new-model", TrainConfig(epochs=10, batch_size=24, checkpoint_s=1e9),
                      pretrained=tmp_path / "shared", compare_scratch=True)
    summary = json.loads((model / "training.json").read_text())
    ours, scratch = summary["evaluation"], summary["scratch"]
    assert ours["held_out_images"] == scratch["held_out_images"] == 50 and ours["chance"] == 0.02
    held = {r["image"] for r in json.loads((model / "held_out.json").read_text())}
    assert len(held) == 50 and not held & read_training_images(tmp_path / "shared")
    assert summary["held_out_overlap"] == {"pretraining": 0, "calibration": 0}

    def both_ways(e: dict) -> float:
        return (e["top1_brain_to_image"] + e["top1_image_to_brain"]) / 2

    # Measured here (seed 0): 14 % fine-tuned, 5 % from scratch; over seeds 0-2 the two are close.
    assert both_ways(ours) >= 3 * ours["chance"]
    report = write_report(model).read_text()
    assert "| from scratch, same data | 50 |" in report and "pretraining 0, calibration 0" in report


@pytest.mark.claim
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pretraining_beats_scratch_in_every_seed_on_unseen_images(tmp_path):
    """The claim itself (make claim; about 6 minutes on 2 cores): three repetitions, each with its own
    pretraining, fine-tuning and scratch runs; the pretrained model is ahead in every one and by at
    least 5 points on the mean. Measured (2026-12-01): 24 / 19 / 24 % against 13 / 14 / 11 %.

    Before 2026-12-01 pretraining saw one session per person, as much data as the new person's hour,
    and the advantage was 1 to 6 points and not in every seed (docs/calibration.md)."""
    from rtdecode.claim import ClaimSetup, measure, table

    rows = measure(tmp_path, [0, 1, 2], ClaimSetup())
    print(table(rows))
    for row in rows:
        assert row["overlap"] == {"pretraining": 0, "calibration": 0} and row["held_out_images"] == 50
        assert row["pretrained"] > row["scratch"], row
    gain = sum(r["pretrained"] - r["scratch"] for r in rows) / len(rows)
    assert gain >= 0.05, table(rows)
