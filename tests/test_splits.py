"""Held-out images stay out of every training set: by construction in the simulator, by check in calibration."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calibration.data import SubjectData
from calibration.splits import OverlapError, parse_holdout, repeated_images, require_disjoint
from rtdecode.gallery import (
    splits as gallery_splits,  # its test_pool is not a test: keep it off the module level
)
from rtdecode.gallery.splits import is_test_image


def _images(folder, subject):
    from rtdecode.simulator.trials import load_session

    return load_session(folder / f"sub-{subject}" / "ses-01")[1]


def test_pretraining_never_sees_the_test_pool_and_a_new_person_is_tested_only_on_it(tmp_path, latent_space):
    """On round 2's start every subject drew from all 1,200 images (write_dataset passed no exclusion)."""
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    specs = [SubjectSpec(name=f"p{i}", n_voxels=60, seed=i, latent_dim=32) for i in range(3)]
    write_dataset(tmp_path / "others", specs, sessions=1, latent=latent_space)  # role "pretrain" by default
    # 50 images x 3 repeats and 150 once: the new-person pool of 1,200 images holds 300 (issue 35).
    write_dataset(tmp_path / "new", [SubjectSpec(name="n", n_voxels=60, seed=9, latent_dim=32)], sessions=1,
                  n_runs=6, trials_per_run=50, n_repeated=50, latent=latent_space, role="new")
    pretraining = {im for s in specs for im in _images(tmp_path / "others", s.name)}
    assert len(pretraining) > 650 and not any(is_test_image(im) for im in pretraining)
    assert not set(_images(tmp_path / "new", "n")) & pretraining  # a new person's images are new (issue 35)
    shown = _images(tmp_path / "new", "n")
    counts = {im: shown.count(im) for im in set(shown)}
    held_out = {im for im, c in counts.items() if c > 1}
    assert len(held_out) == 50 and all(is_test_image(im) for im in held_out)
    assert not any(is_test_image(im) for im, c in counts.items() if c == 1)
    assert not held_out & pretraining
    assert len(gallery_splits.test_pool()) == 200


def _data(images, runs=None):
    n = len(images)
    return SubjectData("s", np.zeros((n, 3), np.float32), list(images), np.zeros((n, 2, 2), np.float32),
                       runs=None if runs is None else np.asarray(runs))


def test_holdout_can_be_named_by_runs_file_or_ids(tmp_path):
    data = _data(["a", "b", "a", "c", "d", "e"], runs=[1, 1, 2, 2, 3, 3])
    assert parse_holdout(None, data) == repeated_images(data) == {"a"}
    assert parse_holdout("runs:3", data) == {"d", "e"}
    (tmp_path / "ids.txt").write_text("b\nc\n")
    assert parse_holdout(f"@{tmp_path / 'ids.txt'}", data) == {"b", "c"}
    assert parse_holdout("b,e", data) == {"b", "e"}
    with pytest.raises(ValueError, match="never shown"):
        parse_holdout("b,zz", data)
    with pytest.raises(ValueError, match="no trials in run"):
        parse_holdout("runs:7", data)


def test_an_overlap_is_refused_in_one_line_naming_the_count():
    with pytest.raises(OverlapError) as err:
        require_disjoint({"a", "b", "c"}, {"pretraining": {"b", "c", "x"}, "calibration": {"y"}})
    assert str(err.value).startswith("2 of the 3 held-out images were trained on (2 in the pretraining set)")
    assert "\n" not in str(err.value)
    counts = require_disjoint({"a", "b"}, {"pretraining": {"b"}, "calibration": set()}, allow_overlap=True)
    assert counts == {"pretraining": 1, "calibration": 0}
    assert require_disjoint({"a"}, {"pretraining": None}) == {"pretraining": None}  # not listed: not known


@pytest.mark.slow
def test_calibrate_refuses_held_out_images_the_pretrained_model_saw_unless_allowed(tmp_path, latent_space):
    """On round 2's start calibration trained on and reported such figures without a word."""
    from calibration.build import calibrate, load_trial_dataset, pretrain
    from calibration.report import write_report
    from calibration.trainer import TrainConfig
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    spec = SubjectSpec(name="q", n_voxels=70, seed=4, latent_dim=32)
    write_dataset(tmp_path / "ds", [spec], sessions=1, n_runs=2, trials_per_run=40, latent=latent_space, role="any")
    data = load_trial_dataset(tmp_path / "ds", "q", tmp_path / "cache")
    config = TrainConfig(epochs=3, batch_size=8, checkpoint_s=1e9)
    shared = pretrain([data.zscored()], tmp_path / "shared", config, hidden=32)  # it saw every image, held-out too
    assert (shared / "training_images.txt").read_text().split() == sorted(set(data.images))
    data = dataclasses.replace(data, subject="q2", person=None)  # the same images as another person's (issue 35)
    with pytest.raises(OverlapError, match=f"^{len(repeated_images(data))} of the {len(repeated_images(data))} held-out"):
        calibrate(data, tmp_path / "refused", config, pretrained=shared)
    assert not (tmp_path / "refused" / "training.json").exists()
    model = calibrate(data, tmp_path / "allowed", config, pretrained=shared, allow_overlap=True)
    summary = json.loads((model / "training.json").read_text())
    assert summary["held_out_overlap"] == {"pretraining": len(repeated_images(data)), "calibration": 0}
    assert write_report(model).read_text().startswith("**Held-out images were trained on")
