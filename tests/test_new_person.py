"""A new person is new (issue 35): simulated datasets never share a person unless asked, a new person's
images are not pretraining images, and calibrate refuses (or, asked, flags first) a person whose brain
was in pretraining. Real processes: the rtdecode CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--runs", "2", "--trials", "30"]  # 60 trials: 4 images shown 3 times (held out), 48 to train on


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "rtdecode.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def people(dataset: Path) -> dict[str, str]:
    return {s["name"]: s["person"] for s in json.loads((dataset / "dataset.json").read_text())["subjects"]}


def images(dataset: Path, subject: str) -> set[str]:
    rows = (dataset / f"sub-{subject}" / "ses-01" / "trials.tsv").read_text().splitlines()[1:]
    return {r.split("\t")[2] for r in rows}


@pytest.mark.slow
def test_a_new_person_is_new_and_a_seen_one_is_refused_or_flagged_first(tmp_path):
    """Before issue 35 `simulate betas --role new` made sim01 again (the pretraining dataset's first brain),
    and calibrate fine-tuned its pretrained ridge without a word."""
    pre, new, seen = tmp_path / "pre", tmp_path / "new", tmp_path / "seen"
    cli("simulate", "betas", "--out", pre, "--subjects", 2, *SMALL)
    cli("simulate", "betas", "--out", new, "--subjects", 1, "--role", "new", *SMALL)
    assert not set(people(new)) & set(people(pre)) and not set(people(new).values()) & set(people(pre).values())
    (subject,) = people(new)
    # The new person's once-shown images are new to the pretraining people too (NSD-like), held-out ones too.
    assert not images(new, subject) & (images(pre, "sim01") | images(pre, "sim02"))

    cli("pretrain", "--dataset", pre, "--subjects", *people(pre), "--out", tmp_path / "shared", "--epochs", 3,
        "--hidden", 32, "--threads", 1)
    assert (tmp_path / "shared" / "training_people.txt").read_text().split() == sorted(people(pre).values())
    cli("calibrate", "--dataset", new, "--subject", subject, "--pretrained", tmp_path / "shared", "--out",
        tmp_path / "m-new", "--epochs", 3, "--threads", 1, "--no-report")
    summary = json.loads((tmp_path / "m-new" / "training.json").read_text())
    assert summary["seen_person"] is None and summary["person"] == people(new)[subject]
    assert summary["calibration_images_in_pretraining"]["in_pretraining"] == 0

    # Asked for: the first pretraining person, scanned again as a person to calibrate.
    cli("simulate", "betas", "--out", seen, "--subjects", 1, "--role", "new", "--first-person", 1, "--seed", 3, *SMALL)
    assert people(seen) == {"sim01": people(pre)["sim01"]}
    refused = cli("calibrate", "--dataset", seen, "--subject", "sim01", "--pretrained", tmp_path / "shared", "--out",
                  tmp_path / "m-seen", "--epochs", 3, "--threads", 1, check=False)
    assert refused.returncode != 0 and not (tmp_path / "m-seen" / "model.safetensors").exists()
    assert "sim01 is not a new person" in refused.stderr and "--allow-seen-person" in refused.stderr
    flagged = cli("calibrate", "--dataset", seen, "--subject", "sim01", "--pretrained", tmp_path / "shared", "--out",
                  tmp_path / "m-seen", "--epochs", 3, "--threads", 1, "--allow-seen-person")
    assert flagged.stdout.splitlines()[0].startswith("WARNING: sim01 is not a new person")
    summary = json.loads((tmp_path / "m-seen" / "training.json").read_text())
    assert "brain (simulated:seed=1) was in pretraining" in summary["seen_person"]
    report = (tmp_path / "m-seen" / "report" / "report.md").read_text()
    assert report.startswith("**Not a new person: its brain (simulated:seed=1)")


def test_dataset_people_are_numbered_apart_by_role_and_seed():
    from rtdecode.simulator.subjects import dataset_people

    names = {(role, seed): [s.name for s in dataset_people(3, role, seed)] for role in ("pretrain", "new", "any")
             for seed in (0, 1)}
    assert names[("pretrain", 0)] == ["sim01", "sim02", "sim03"] and names[("new", 0)] == ["sim51", "sim52", "sim53"]
    flat = [n for v in names.values() for n in v]
    assert len(flat) == len(set(flat))
    with pytest.raises(ValueError, match="at most 25 people"):
        dataset_people(26, "new", 0)


def test_a_scrambled_person_shares_no_code(latent_space):
    """A scrambled person's responses follow other images' latents: no linear map from the images' own
    latents explains them, where it does for a person with the shared code (same brain otherwise)."""
    import numpy as np

    from rtdecode.simulator.subjects import SimulatedSubject, SubjectSpec

    idx = np.arange(300)
    z = latent_space.of_images(idx)
    fits = []
    for scramble in (0, 4):
        spec = SubjectSpec(name="s", n_voxels=80, seed=5, latent_dim=32, scramble=scramble)
        y = SimulatedSubject(spec).responses(latent_space.of_images(spec.code_of(idx, latent_space.stimuli.n)))
        coef, *_ = np.linalg.lstsq(np.c_[z[:200], np.ones(200)], y[:200], rcond=None)
        pred = np.c_[z[200:], np.ones(100)] @ coef
        fits.append(np.mean([np.corrcoef(pred[:, v], y[200:, v])[0, 1] for v in range(y.shape[1])]))
    assert fits[0] > 0.6 and fits[1] < 0.2, fits


def test_a_simulated_run_is_a_new_person_unless_asked(tmp_path):
    """`rtdecode simulate run --subject-seed 1` simulated sim01 (seed 1), the brain of a pretraining
    dataset's first person: a volume-level visit is now a new person by simulate betas' rule."""
    small = ["--volumes", "20", "--trials", "4", "--runs", "2", "--shape", "30x36x26", "--voxel-mm", "5",
             "--speedup", "400"]

    def person(name: str, *extra) -> tuple[str, int]:
        done = cli("simulate", "run", "--out", tmp_path / name / "watch", "--truth", tmp_path / name, *small, *extra)
        subject = json.loads((tmp_path / name / "series-001_truth.json").read_text())["subject"]
        assert done.stdout.startswith(f"subject {subject['name']}:"), done.stdout
        return subject["name"], subject["seed"]

    cli("simulate", "betas", "--out", tmp_path / "pre", "--subjects", 2, *SMALL)
    pretraining = {int(p.rsplit("=", 1)[1]) for p in people(tmp_path / "pre").values()}
    first, second = person("one", "--subject-seed", 1), person("two", "--subject-seed", 2, "--participant", "02/01")
    assert first == ("sim51", 51) and second == ("sim52", 52)  # the new people of simulate betas --role new
    assert not {first[1], second[1]} & pretraining and first[0] not in people(tmp_path / "pre")
    assert person("three", "--seed", 1)[1] == 151  # another seed's new person
    assert person("asked", "--first-person", 1) == ("sim01", 1)  # a pretraining brain, asked for
    refused = cli("simulate", "run", "--out", tmp_path / "x", *small, "--subject-seed", 51, check=False)
    assert refused.returncode == 2 and "--subject-seed is which new person of --seed, 1 to 25" in refused.stderr
