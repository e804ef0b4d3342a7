"""`rtdecode bench betas` takes every option of `python -m rtdecode.tools.betas_bench` (issue 32's were left out)."""

from __future__ import annotations

import pytest

from rtdecode.cli import main


def test_bench_betas_takes_the_benchs_own_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "betas", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--seeds", "--out", "--voxels", "--configs", "--calibration-runs", "--realtime-runs", "--physiology",
                   "--no-grid", "--no-top1", "--merge"):
        assert option in text
    with pytest.raises(SystemExit) as done:  # checked by the bench's own parser, not refused as unknown
        main(["bench", "betas", "--physiology", "purple", "--no-top1"])
    assert done.value.code == 2
    assert "argument --physiology: invalid choice: 'purple'" in capsys.readouterr().err


def test_bench_betas_help_says_each_options_default_and_configs_take_letters(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "betas", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "issue 20" not in text.split("options:")[0]  # the description speaks plainly
    for words in ("--seeds 0 1 2 (default: 0)", "one letter each (default: abcreo): a Real-time MindEye",
                  "learn from (default: 11)", "never shows (default: 3)", "do not respond (default: 2000)"):
        assert words in text
    with pytest.raises(SystemExit) as done:
        main(["bench", "betas", "--configs", "axz", "--seeds", "x"])  # --seeds x: never a 5-minute bench run
    assert done.value.code == 2
    assert "argument --configs: expected letters of abcrdeo (e.g. aeo), got 'axz'" in capsys.readouterr().err
