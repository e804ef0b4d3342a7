"""``rtdecode bench contention`` as a real process: the scanner side, the decoder and a busy process
together; every stage measured, every process on the threads it was given (issue 27, defect 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rtdecode.base.threads import ENV_VARS

RTDECODE = str(Path(sys.executable).with_name("rtdecode"))


def test_bench_contention_measures_every_stage_on_bounded_threads():
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    done = subprocess.run([RTDECODE, "bench", "contention", "--json", "--volumes", "36", "--tr", "0.4", "--voxels", "400",
                           "--shape", "40x46x30"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {r["stage"]: r for r in result["rows"]}
    assert result["trials"] == 3  # onsets 0, 4.5 and 9 s, up to 10 volumes before the end of a 14.4-s run
    assert all(r["n"] > 0 and r["median_ms"] <= r["p99_ms"] for r in rows.values()), rows
    assert rows["volume file -> preprocessed and stored"]["n"] == 36
    assert rows["trial's last volume file -> retrieval received"]["n"] == 3  # every trial decoded and timed
    assert result["read_back"]["scanner"]["openblas"] == 1
    assert "torch 1," in result["read_back"]["decoder"] and "openblas 1" in result["read_back"]["decoder"]
