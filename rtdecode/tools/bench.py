"""``rtdecode bench <stage>``: does this machine keep up with the TR?

Each stage's benchmark sits beside its stage (``rtdecode/glm/bench.py``, ``gui/bench.py``, ...) and
measures its code on what it is handed. This module sits at the top with the CLI: it is the one place
that asks the simulator for data and hands it over, so no stage depends on the simulator. Each stage
prints a human table, or with ``--json`` one JSON object of its figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHAPE = (100, 100, 52)  # 2 mm whole brain


def _writer(fmt: str) -> Callable[[Path, np.ndarray, np.ndarray, int, int], None]:
    from rtdecode.simulator.scanner import WRITERS

    if fmt not in WRITERS:
        raise SystemExit(f"rtdecode bench: unknown format {fmt!r}; available: {', '.join(sorted(WRITERS))}")
    write = WRITERS[fmt]
    return lambda path, data, affine, series, instance: write(path, data, affine, series_number=series,
                                                              instance=instance)


def bench_preprocess(volumes: int = 40, shape: tuple[int, int, int] = SHAPE, n_voxels: int = 8627,
                     fmt: str = "mosaic", seed: int = 0) -> dict:
    """File closed -> masked vector for a 2 mm whole-brain volume that moves up to 3 mm / 3 degrees."""
    from rtdecode.scanner.bench import bench_preprocess as bench
    from rtdecode.simulator.scanner import simulate_run

    run = simulate_run(volumes, shape=shape, max_mm=3.0, max_deg=3.0, seed=seed)
    return bench(run.volumes, run.affine, _writer(fmt), n_voxels=n_voxels, fmt=fmt, motion=run.motion)


def bench_endurance(volumes: int = 4800, shape: tuple[int, int, int] = SHAPE, n_voxels: int = 8627,
                    run_volumes: int = 192, seed: int = 0, budget_mb: float = 50.0) -> dict:
    """A whole scanner side over 25 runs of Siemens mosaics made from 16 simulated head positions."""
    from rtdecode.scanner.bench import bench_endurance as bench
    from rtdecode.simulator.scanner import simulate_run

    pool = simulate_run(16, shape=shape, max_mm=1.0, max_deg=1.0, seed=seed)
    return bench(pool.volumes, pool.affine, _writer("mosaic"), volumes=volumes, n_voxels=n_voxels,
                 run_volumes=run_volumes, seed=seed, budget_mb=budget_mb)


def bench_glm(n_voxels: int | None = None, volumes: int = 192, seed: int = 0) -> dict:
    """The GLM on the simulator's masked runs (AR(1) noise, task responses, motion)."""
    from rtdecode.glm.bench import bench_glm as bench
    from rtdecode.simulator.masked import masked_run

    return bench(masked_run, n_voxels=n_voxels, volumes=volumes, seed=seed)


def bench_wire(n_voxels: int = 15724, seed: int = 0) -> dict:
    """The betas channel, and a result image that looks like a picture (a built-in image at 768 px)."""
    from PIL import Image

    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.wire.bench import bench_wire as bench

    picture = np.asarray(Image.fromarray(StimulusSet().image(3)).resize((768, 768), Image.BICUBIC))
    return bench(picture, n_voxels=n_voxels, seed=seed)


def bench_simulate(**kwargs) -> dict:
    from rtdecode.simulator.bench import bench_simulate as bench

    return bench(**kwargs)


def bench_decoder(**kwargs) -> dict:
    from rtdecode.decoder.bench import bench_decoder as bench

    return bench(**kwargs)


def bench_console(**kwargs) -> dict:
    from gui.bench import bench_console as bench

    return bench(**kwargs)


def bench_calibrate(**kwargs) -> dict:
    from calibration.bench import bench_calibrate as bench

    return bench(**kwargs)


def bench_finalize(volumes: int = 192, shape: tuple[int, int, int] = SHAPE, n_voxels: int = 8627, seed: int = 0) -> dict:
    """A 192-volume 2 mm run's live record written as BIDS (rtdecode session finalize)."""
    from rtdecode.bids.bench import bench_finalize as bench
    from rtdecode.simulator.scanner import simulate_run

    pool = simulate_run(16, shape=shape, max_mm=1.0, max_deg=1.0, seed=seed)
    # As a DICOM export carries them: integer pixel values (the reader returns them as float32).
    volumes_as_read = [np.rint(v).astype(np.float32) for v in pool.volumes]
    return bench(volumes_as_read, pool.affine, volumes=volumes, n_voxels=n_voxels)


def bench_contention(**kwargs) -> dict:
    """The scanner side, the decoder and a competing load on one machine (rtdecode/demo/contention.py)."""
    from rtdecode.demo.contention import bench_contention as bench

    return bench(**kwargs)


def run_projection(stage: str, as_json: bool = False, **kwargs) -> dict:
    """``rtdecode bench decoder|calibrate --project``: counted on the meta device, projected onto named GPUs."""
    from calibration.bench import project_calibrate
    from rtdecode.decoder.project import project_decoder

    projectors = {"decoder": project_decoder, "calibrate": project_calibrate}
    if stage not in projectors:
        raise SystemExit(f"rtdecode bench: --project is for {' and '.join(projectors)}, not {stage!r}")
    result = projectors[stage](**{k: v for k, v in kwargs.items() if v is not None})
    print(json.dumps({k: v for k, v in result.items() if k != "markdown"}) if as_json else
          f"{result['stage']}\n\n{result['markdown']}", flush=True)
    return result


def bench_gpu(**kwargs) -> dict:
    """Every GPU figure at once, beside the projections (rtdecode/tools/gpu_bench.py)."""
    from rtdecode.tools.gpu_bench import bench_gpu as bench

    return bench(**kwargs)


STAGES: dict[str, Callable[..., dict]] = {
    "preprocess": bench_preprocess, "endurance": bench_endurance, "simulate": bench_simulate, "glm": bench_glm,
    "decoder": bench_decoder, "wire": bench_wire, "console": bench_console, "calibrate": bench_calibrate,
    "finalize": bench_finalize, "gpu": bench_gpu, "contention": bench_contention,
}


def format_table(result: dict) -> str:
    """A two-column table for people."""
    width = max(len(k) for k in result)
    lines = [f"{'figure':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in result.items():
        # Small figures (motion errors of a few micrometres) keep three significant digits, not 0.00.
        text = (f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}") if isinstance(value, float) \
            else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def run_stage(name: str, as_json: bool = False, **kwargs) -> dict:
    if name not in STAGES:
        raise SystemExit(f"rtdecode bench: unknown stage {name!r}; available: {', '.join(STAGES)}")
    result = STAGES[name](**{k: v for k, v in kwargs.items() if v is not None})
    if "markdown" in result:  # a stage with its own table (contention)
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}) if as_json else result["markdown"],
              flush=True)
    else:
        print(json.dumps(result) if as_json else format_table(result), flush=True)
    return result
