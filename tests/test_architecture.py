"""The house's layering: the import-linter contracts in pyproject.toml hold, cover every room and module,
no rooms or modules import each other in a circle, and each wrong-way import that rounds 1 and 2 had
(put back into a copy of the code) breaks a contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
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


def _floors() -> set[str]:
    (floors,) = [c for c in _contracts() if c["name"].startswith("the house's floors")]
    return {room.strip() for layer in floors["layers"] for room in layer.split("|")}


def _circles(graph: grimp.ImportGraph, group) -> list[set[str]]:
    """Groups (of ``group(module)``) that import each other, directly or round a loop (Tarjan's SCCs)."""
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = group(module), group(imported)
            if a is not None and b is not None and a != b:
                edges.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "rtdecode" and len(parts) > 1 else parts[0]


def test_no_circles_between_rooms_or_between_modules_of_rtdecode():
    """Shared things move down (rtdecode.base) rather than being imported lazily round a loop."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)  # a cache could hide a file changed within its second
    assert _circles(graph, _room) == []
    assert _circles(graph, lambda m: m if m.startswith("rtdecode.") else None) == []


def test_no_circles_between_modules_of_calibration_gui_or_models():
    """The same inside the other packages (calibration.build and calibration.tuning met in calibration.heldout).
    Imports under TYPE_CHECKING only name a type for the checker, so they may point back (gui's state)."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    for package in ("calibration", "gui", "models"):
        assert _circles(graph, lambda m, p=package: m if m.startswith(f"{p}.") else None) == [], package


def test_every_room_stands_on_a_floor():
    rooms = {f"rtdecode.{child}" for child in _children("rtdecode")} | {"calibration", "gui", "models"}
    assert rooms == _floors(), f"not on a floor: {sorted(rooms - _floors())}"


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
    for room, allowed in (("base", {"errors", "ids"}), ("tools", set())):  # the wire brings errors and ids
        named = {m.split(".")[2] for m in _contract("the GUI")["forbidden_modules"] if m.startswith(f"rtdecode.{room}.")}
        assert named | allowed == _children(f"rtdecode/{room}"), \
            f"not in the gui contract: {sorted(_children(f'rtdecode/{room}') - named - allowed)}"
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
    # round 2's, each of which lint-imports let through (issue 36)
    ("rtdecode/base/config.py", "from rtdecode.glm.runner import tuned_count",
     "rtdecode.base.config is not allowed to import rtdecode.glm.runner"),
    ("rtdecode/base/config.py", "from rtdecode.preprocess.pipeline import RunPreprocessor",
     "rtdecode.base.config is not allowed to import rtdecode.preprocess.pipeline"),
    ("rtdecode/ingest/sequencer.py", "from rtdecode.preprocess.pipeline import RunPreprocessor",
     "rtdecode.ingest is not allowed to import rtdecode.preprocess"),
    ("rtdecode/scanner/side.py", "from rtdecode.decoder.core import Decoder",
     "rtdecode.scanner is not allowed to import rtdecode.decoder"),
    ("rtdecode/scanner/side.py", "from models.mindeye2.model import MindEye2",
     "rtdecode.scanner is not allowed to import models"),
    ("rtdecode/decoder/core.py", "from rtdecode.base.session import SessionFolder",
     "rtdecode.decoder.core is not allowed to import rtdecode.base.session"),
    ("rtdecode/bids/run.py", "from rtdecode.scanner.side import ScannerSide",
     "rtdecode.bids is not allowed to import rtdecode.scanner"),
    # the base importing stages, and round 2's circle through it
    ("rtdecode/base/session.py", "from rtdecode.bids.names import bold_path",
     "rtdecode.base is not allowed to import rtdecode.bids"),
    ("rtdecode/base/config.py", "from rtdecode.ingest.reader import read_volume",
     "rtdecode.base is not allowed to import rtdecode.ingest"),
    ("rtdecode/bids/dataset.py", "from rtdecode.wire.schema import LABEL",
     "rtdecode.bids is not allowed to import rtdecode.wire"),
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
