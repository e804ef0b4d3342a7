"""Calibration settings chosen on the calibration hour's training trials, blind to its held-out images,
with the same search for the pretrained and the from-scratch model (issue 35)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_tuning_never_looks_at_the_held_out_images_and_both_arms_search_alike(tmp_path, latent_space, one_torch_thread):
    from calibration.build import calibrate, load_trial_dataset, pretrain
    from calibration.data import SubjectData
    from calibration.splits import repeated_images
    from calibration.trainer import TrainConfig
    from calibration.tuning import Grid
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    write_dataset(tmp_path / "pre", [SubjectSpec(name="sim01", n_voxels=140, seed=1, latent_dim=32)], n_runs=3,
                  trials_per_run=40, latent=latent_space)
    write_dataset(tmp_path / "new", [SubjectSpec(name="sim51", n_voxels=170, seed=51, latent_dim=32)], n_runs=4,
                  trials_per_run=40, latent=latent_space, role="new")
    pretrain([load_trial_dataset(tmp_path / "pre", "sim01", tmp_path / "cache").zscored()], tmp_path / "shared",
             TrainConfig(epochs=3, batch_size=24, checkpoint_s=1e9), hidden=32)
    data = load_trial_dataset(tmp_path / "new", "sim51", tmp_path / "cache")
    held = repeated_images(data)
    grid = Grid((1e-3, 1e-2), (3,))
    # The same hour, its held-out trials' betas replaced by noise: the held-out figures change, the tuning may not.
    rows = np.isin(data.images, sorted(held))
    noisy = data.betas.copy()
    noisy[rows] = np.random.default_rng(3).normal(size=(rows.sum(), data.n_voxels)).astype(np.float32)
    other = SubjectData(data.subject, noisy, data.images, data.tokens, runs=data.runs, person=data.person)
    config = TrainConfig(batch_size=24, checkpoint_s=1e9)
    summaries = []
    for name, d in (("a", data), ("b", other)):
        folder = calibrate(d, tmp_path / name, config, pretrained=tmp_path / "shared", compare_scratch=True, tune=grid)
        summaries.append(json.loads((folder / "training.json").read_text()))
    a, b = summaries
    assert a["tuning"] == b["tuning"] and a["evaluation"] != b["evaluation"]
    assert not set(a["tuning"]["validation_images"]) & held and a["tuning"]["validation_images"]
    assert [(r["max_lr"], r["epochs"]) for r in a["tuning"]["grid"]] == grid.points()
    scratch = json.loads((tmp_path / "a" / "scratch" / "training.json").read_text())
    assert scratch["tuning"]["from"] == "scratch" and a["tuning"]["from"] == "pretrained"
    assert [(r["max_lr"], r["epochs"]) for r in scratch["tuning"]["grid"]] == grid.points()
    assert scratch["tuning"]["validation_images"] == a["tuning"]["validation_images"]
    for s in (a, scratch):  # each model trained with its own tuning's choice
        assert {"max_lr": s["train"]["max_lr"], "epochs": s["train"]["epochs"]} == s["tuning"]["best"]


def test_a_tuning_grid_is_read_or_refused_in_one_line():
    from calibration.tuning import Grid

    assert Grid.parse("1e-3,3e-3:5,10").points() == [(1e-3, 5), (1e-3, 10), (3e-3, 5), (3e-3, 10)]
    for bad in ("1e-3,3e-3", "x:5", "1e-3:0"):
        with pytest.raises(ValueError, match="--tune"):
            Grid.parse(bad)
