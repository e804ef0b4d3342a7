"""MindEye2's claim on the simulator in a fair fight (issue 35): five new people (each new, each seeing
new images), a model pretrained on other people then fine-tuned on one hour, one trained from scratch
on that hour, and one pretrained on people who share no code with the new person; every arm tuned on a
validation split of the hour's training trials, never on the held-out images (docs/calibration.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.claim  # make claim (CI runs it after make test): too long for the 10-minute suite
@pytest.mark.slow
@pytest.mark.timeout(3600)  # the claim's own deadline (3,000 s) comes first and names what was still running
def test_the_claim_in_a_fair_fight(tmp_path):
    from calibration.splits import read_training_images
    from rtdecode.tools.claim import ClaimSetup, measure, paired, table

    setup = ClaimSetup(deadline_s=3000)
    rows = measure(tmp_path, setup)
    print(table(rows))
    assert len(rows) == 3 * setup.new_people and len({r["person"] for r in rows}) == setup.new_people
    for row in rows:  # fair by construction, and checked
        assert row["overlap"] in ({"pretraining": 0, "calibration": 0}, {"calibration": 0}), row
        assert row["held_out_images"] == 50 and row["chance"] == 0.02 and row["seen_person"] is None
        seen = row["images_in_pretraining"]  # None for scratch: no pretraining to have seen them
        assert (seen is None) == (row["arm"] == "scratch") and (seen is None or seen["in_pretraining"] == 0), row
        assert row["tuned"]["max_lr"] in setup.lrs and row["tuned"]["epochs"] in setup.epochs
        folder = tmp_path / "models" / row["name"]
        summary = json.loads((folder / "training.json").read_text())
        held = {r["image"] for r in json.loads((folder / "held_out.json").read_text())}
        assert not held & set(summary["tuning"]["validation_images"])  # tuned blind to the test
        if summary["pretrained"]:
            assert not held & read_training_images(Path(summary["pretrained"]))
    # The measured relation (2026-12-05; docs/calibration.md): pretrained 34 / 23 / 35 / 28 / 32 %, scratch
    # 29 / 29 / 26 / 16 / 27 %, scrambled 29 / 28 / 27 / 21 / 30 %. Pretraining is ahead on the mean (+5.0
    # points) and for 4 of 5 people, but not established: the paired 95 % interval spans zero (p 0.18).
    # Pretraining on people who share no code is within 2 points of scratch: most of it is transfer.
    real = paired(rows, "pretrained", "scratch", 11)
    control = paired(rows, "scrambled", "scratch", 11)
    transfer = paired(rows, "pretrained", "scrambled", 11)
    assert real["mean"] > 0 and real["wins"] >= 3, table(rows)
    assert real["ci95"][0] < 0 < real["ci95"][1], "the advantage is now established: update docs/calibration.md"
    assert abs(control["mean"]) < 0.03 and transfer["mean"] > 0, table(rows)


@pytest.mark.slow
def test_a_finished_unit_is_read_back_not_trained_again(tmp_path):
    """A claim's work folder keeps its datasets, shared models and finished units: measuring again (more
    sizes, after a stop) reads a unit whose training.json is there instead of training it again."""
    from rtdecode.tools.claim import ClaimSetup, measure

    setup = ClaimSetup(new_people=2, arms=("scratch",), runs=(1,), lrs=(1e-2,), epochs=(1,), workers=1)
    first = measure(tmp_path, setup, log=lambda *_: None)
    stamps = {r["name"]: (tmp_path / "models" / r["name"] / "model.safetensors").stat().st_mtime_ns for r in first}
    assert len(stamps) == 2 and all(r["held_out_images"] == 50 for r in first)
    again = measure(tmp_path, setup, log=lambda *_: None)
    assert again == first
    assert {n: (tmp_path / "models" / n / "model.safetensors").stat().st_mtime_ns for n in stamps} == stamps


def test_a_second_pretraining_seed_gets_its_own_shared_models_and_units():
    """In one work folder a second pretraining seed must not read the first seed's models back."""
    from rtdecode.tools.claim import ClaimSetup, _plan, _shared

    first, second = ClaimSetup(), ClaimSetup(pretrain_seed=1)

    def units(setup: ClaimSetup) -> set[str]:
        return {unit["name"] for kind, unit, _ in _plan(setup) if kind == "unit"}

    assert _shared(first, "real") == "shared-real" and _shared(second, "real") == "shared-real-p1"
    scratch = {n for n in units(first) if n.startswith("scratch-")}
    assert len(scratch) == 5 and scratch <= units(second)  # scratch needs no pretraining: the same units
    assert len(units(first) - scratch) == 10 and not (units(first) - scratch) & units(second)
