"""Issue 28, round 4 (9): each simulated participant has their own stimulus order and head motion.

`rtdecode simulate run --subject-seed 1 --participant 01/01` and `... 2 ... 02/01` (issue 28: 51 and 52) wrote the same events
table and the same motion; the defaults stay as they were (other tests rely on them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtdecode.cli import main
from rtdecode.simulator.visit import Visit

SMALL = ["--volumes", "40", "--trials", "8", "--shape", "30x36x26", "--voxel-mm", "5", "--speedup", "400",
         "--run", "1", "--runs", "3"]


def _simulate(tmp_path, name: str, *extra: str) -> tuple[pd.DataFrame, np.ndarray]:
    truth = tmp_path / name / "truth"
    assert main(["simulate", "run", "--out", str(tmp_path / name / "watch"), "--truth", str(truth), *SMALL, *extra]) == 0
    events = pd.read_csv(truth / "series-001_events.tsv", sep="\t")
    motion = pd.read_csv(truth / "series-001_motion_truth.tsv", sep="\t").to_numpy(float)
    return events, motion


def test_each_participant_has_their_own_stimulus_order_and_motion(tmp_path):
    one = _simulate(tmp_path, "a", "--subject-seed", "1", "--participant", "01/01")
    two = _simulate(tmp_path, "b", "--subject-seed", "2", "--participant", "02/01")
    again = _simulate(tmp_path, "c", "--subject-seed", "1", "--participant", "01/01")
    assert list(one[0].image) != list(two[0].image), "the same stimulus order for two participants"
    assert one[1].shape == two[1].shape and not np.allclose(one[1], two[1]), "the same head motion"
    assert list(one[0].image) == list(again[0].image) and np.array_equal(one[1], again[1])  # repeatable


def test_the_defaults_keep_the_seed_they_were_given():
    assert Visit.participant_seed(7, 1, "01", "01") == 7
    assert len({Visit.participant_seed(7, s, sub, "01") for s, sub in ((1, "02"), (2, "01"), (2, "02"))}) == 3


def test_a_missing_stimuli_folder_is_called_a_folder(tmp_path):
    """10: session.stimuli naming a missing folder said 'names a file'."""
    import subprocess
    import sys

    template = subprocess.run([sys.executable, "-m", "rtdecode.cli", "config", "template"], capture_output=True,
                              text=True, timeout=120, check=True).stdout
    assert 'stimuli = ""' in template
    path = tmp_path / "session.toml"
    path.write_text(template.replace('stimuli = ""', 'stimuli = "no-such-stimuli"', 1))
    check = subprocess.run([sys.executable, "-m", "rtdecode.cli", "config", "check", str(path)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode != 0
    assert "session.stimuli names a folder that does not exist" in check.stdout + check.stderr, check.stderr
