"""``rtdecode bench finalize``: one run's live record written as BIDS, timed (target: under 10 s for a
192-volume 2 mm run)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_finalize(pool: list[np.ndarray], affine: np.ndarray, volumes: int = 192, n_voxels: int = 8627,
                   trials: int = 63) -> dict:
    """Record ``volumes`` volumes (cycling through ``pool``) and ``trials`` betas, then finalise the run."""
    from rtdecode.base.session import SessionFolder, append_tsv
    from rtdecode.bids import finalize_session

    shape = pool[0].shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = SessionFolder(Path(tmp), "01", "01").create()
        folder.add_run(1, 7, "bench")
        store = folder.run_store(1)
        mask = np.zeros(shape, bool)
        flat = np.argsort(pool[0].ravel())[::-1][:n_voxels]  # the brightest voxels: a brain-sized mask
        mask.ravel()[flat] = True
        store.save_reference(pool[0], affine, mask.astype(np.uint8), affine)
        store.save_acquisition({"RepetitionTime": 1500.0, "EchoTime": 30.0}, 1.5)
        t0 = time.perf_counter()
        for i in range(volumes):
            data = pool[i % len(pool)]
            store.save_volume(i, data, affine)
            store.append(data[mask], {"volume": i, "trans_x": 0.0, "trans_y": 0.0, "trans_z": 0.0, "rot_x": 0.0,
                                      "rot_y": 0.0, "rot_z": 0.0, "framewise_displacement": 0.0, "dvars": 1.0})
        record_s = time.perf_counter() - t0
        base = folder.derivatives / f"{folder.prefix(1)}_desc-endofrun"
        rng = np.random.default_rng(0)
        rng.normal(size=(trials, n_voxels)).astype("<f4").tofile(f"{base}_betas.f32")
        Path(f"{base}_betas.json").write_text(json.dumps({"n_voxels": n_voxels, "dtype": "<f4", "glm": {"t_r": 1.5}}))
        for t in range(trials):
            append_tsv(Path(f"{base}_betas.tsv"), ("trial", "image", "onset", "version"),
                       {"trial": t, "image": f"sim-{t:05d}", "onset": 4.5 * t, "version": "endofrun"})
        t0 = time.perf_counter()
        done = finalize_session(folder)
        seconds = time.perf_counter() - t0
        if isinstance(done[1], str):
            raise RuntimeError(f"finalize failed: {done[1]}")
        size = sum(p.stat().st_size for p in done[1])
    return {"volumes": volumes, "shape": "x".join(map(str, shape)), "mask_voxels": n_voxels, "trials": trials,
            "record_live_s": record_s, "finalize_s": seconds, "bids_files": len(done[1]), "bids_mb": size / 1e6,
            "target_s": 10.0}
