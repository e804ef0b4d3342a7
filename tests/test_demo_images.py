"""Issue 35 in the demo: the calibration hour's images are new to the demo's shared model, as a new NSD
subject's images are new to a model pretrained on others. Until then the hour's once-shown images came
from the whole training pool, most of which the shared model had been pretrained on."""

from __future__ import annotations

from collections import Counter

import pytest


def _once_and_all(visit) -> tuple[set[str], set[str]]:
    shown = Counter(image for run in visit.plan for image in run)
    return {i for i, k in shown.items() if k == 1}, set(shown)


@pytest.mark.slow
@pytest.mark.parametrize("runs_trials", [None, (8, 63)], ids=["short", "short-with-8-full-runs"])
def test_the_short_demos_calibration_images_were_never_pretrained_on(tmp_path, runs_trials):
    """Traced through the demo's own code: its visits, and its shared model built, saved and listed. With
    8 runs of 63 trials the hour shows 396 images once, more than the default new-person pool holds."""
    from calibration.splits import read_training_images
    from rtdecode.demo import DemoSettings
    from rtdecode.demo.pretrained import calibration_images, shared_model, visits
    from rtdecode.gallery.builtin import image_id
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec

    settings = DemoSettings.short()
    if runs_trials:
        settings = settings.with_(calibration_runs=runs_trials[0], trials=runs_trials[1], volumes=192)
    spec = SubjectSpec(name="demo01", n_voxels=300, seed=1)
    latent = LatentSpace(dim=spec.latent_dim)
    calib, live = visits(settings, spec, latent)
    once, hour = _once_and_all(calib)
    assert len(once) == calibration_images(settings) == (45 if runs_trials is None else 396)
    shared, built = shared_model(settings, tmp_path / "cache", latent, log=lambda *_: None)
    pretrained = read_training_images(shared)
    assert built and len(pretrained) > 150
    assert not hour & pretrained, f"{len(hour & pretrained)} calibration images were pretraining images"
    assert not {image_id(i) for i in live.shown} & (hour | pretrained)


def test_the_full_demos_pools_leave_its_hour_new_images():
    """The full demo's hour shows 543 images once, more than the default new-person pool (300 of 1,200):
    pretraining draws from the 457 training images left, and each of its sessions fits there."""
    from rtdecode.demo import DemoSettings
    from rtdecode.demo.pretrained import calibration_images, visits
    from rtdecode.gallery.builtin import index_of
    from rtdecode.simulator.paradigm import session_plan
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec
    from rtdecode.simulator.trials import pools

    settings = DemoSettings()
    calib, _ = visits(settings, SubjectSpec(name="demo01", n_voxels=300, seed=1), LatentSpace(dim=48))
    once, hour = _once_and_all(calib)
    assert len(once) == calibration_images(settings) == 543
    allowed = pools("pretrain", 1200, calibration_images(settings))
    plan = session_plan(1200, settings.pretrain_runs, settings.trials, round(50 * settings.pretrain_runs * 63 / 693),
                        seed=3, **allowed)
    assert not {index_of(i) for i in hour} & {index_of(i) for run in plan for i in run}
