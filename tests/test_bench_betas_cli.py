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
