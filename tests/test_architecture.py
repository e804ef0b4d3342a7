"""The house's layering: the import-linter contracts in pyproject.toml hold, cover every module, and
catch each wrong-way import that round 1 had (put back into a copy of the code)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rtdecode", "calibration", "gui", "models")
TOP = {"cli", "tools", "demo"}  # the commands: they compose everything, the simulator included


def _lint_imports(where: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(where)}  # the copy's packages shadow the installed ones
    return subprocess.run([str(exe), "--no-logo", "--no-cache"], cwd=where, env=env, capture_output=True, text=True,
                          timeout=120)


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _contract(starts: str) -> dict:
    (found,) = [c for c in _contracts() if c["name"].startswith(starts)]
    return found


def _children(package: str) -> set[str]:
    folder = ROOT / package
    return {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} | \
           {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}


def test_the_house_keeps_its_contracts():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_contracts())} kept, 0 broken" in result.stdout


def test_every_module_of_rtdecode_is_placed_in_the_contracts():
    """A new module must be named where it belongs, or the gui and simulator contracts would miss it."""
    children = _children("rtdecode")
    gui = {m.split(".")[1] for m in _contract("the GUI")["forbidden_modules"] if m.startswith("rtdecode.")}
    assert gui | {"wire"} == children, f"not in the gui contract: {sorted(children - gui - {'wire'})}"
    users = {m.split(".")[1] for m in _contract("only the commands")["source_modules"] if m.startswith("rtdecode.")}
    assert users | TOP | {"simulator"} == children, f"not in the simulator contract: {sorted(children - users - TOP)}"


WRONG_WAY = [  # (file, import put back, what lint-imports must say)
    ("rtdecode/glm/bench.py", "from rtdecode.simulator.paradigm import Paradigm",
     "rtdecode.glm is not allowed to import rtdecode.simulator"),
    ("rtdecode/glm/runner.py", "from rtdecode.wire.protocol import Message",
     "rtdecode.glm is not allowed to import rtdecode.wire"),
    ("calibration/build.py", "from rtdecode.simulator.visit import Visit",
     "calibration is not allowed to import rtdecode.simulator"),
    ("calibration/report.py", "from rtdecode.simulator.trials import write_dataset",
     "calibration is not allowed to import rtdecode.simulator"),
    ("rtdecode/simulator/bold.py", "from rtdecode.glm.design import lss_design",
     "rtdecode.simulator is not allowed to import rtdecode.glm"),
    ("rtdecode/simulator/phantom.py", "from rtdecode.preprocess.rigid import params_to_matrix",
     "rtdecode.simulator is not allowed to import rtdecode.preprocess"),
    ("gui/bench.py", "from rtdecode.tools.bench import format_table", "gui is not allowed to import rtdecode.tools.bench"),
    ("gui/state.py", "from rtdecode.decoder.results import open_results",
     "gui is not allowed to import rtdecode.decoder"),
    ("rtdecode/preprocess/motion.py", "from PyQt6 import QtCore", "rtdecode is not allowed to import PyQt6"),
    ("rtdecode/ingest/reader.py", "from rtdecode.glm.design import frame_times",
     "rtdecode.ingest is not allowed to import rtdecode.glm"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "line", "message"), WRONG_WAY, ids=[w[0] + ":" + w[1].split()[1] for w in WRONG_WAY])
def test_a_wrong_way_import_put_back_breaks_a_contract(tmp_path, path, line, message):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / path, "a") as fh:
        fh.write(f"\n{line}  # put back\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]
