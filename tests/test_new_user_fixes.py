"""A new user's trial (issues 31, 33): what a failing command suggests, and what the headless demo prints."""

from __future__ import annotations

import pytest

from rtdecode.cli import main
from rtdecode.simulator.paradigm import Paradigm


def _images(n: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(n)]


def test_a_run_too_short_for_its_trials_names_the_trials_that_fit(tmp_path, capsys):
    """`simulate run --volumes 80` (63 trials by default): the error says which --trials fits, or which
    --volumes the trials need; both suggestions work and one trial more does not."""
    assert main(["simulate", "run", "--out", str(tmp_path / "watch"), "--volumes", "80"]) == 2
    err = capsys.readouterr().err
    assert "after the run (120 s)" in err and "--trials 29" in err and "--volumes 171" in err
    assert len(Paradigm(volumes=80, trials=29).events(_images(29))) == 29
    assert len(Paradigm(volumes=171).events(_images(63))) == 63
    with pytest.raises(ValueError, match="--trials 29"):
        Paradigm(volumes=80, trials=30).events(_images(30))
    # another TR: 36 x 1.4 s = 50.4 s holds 11 trials (the 11th ends at 47.5 s); 14 end at 59.5 s = 42.5 TRs
    with pytest.raises(ValueError, match=r"--trials 11\).* 14 trials need at least 43 volumes"):
        Paradigm(volumes=36, tr_s=1.4, trials=14).events(_images(14))
