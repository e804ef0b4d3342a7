"""``rtdecode bench glm``: per-trial estimation at the end of a 192-volume run, against nilearn's refit.

The data come from whoever calls (``rtdecode bench glm`` asks the simulator): the GLM does not
depend on a data generator.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np

from rtdecode.base.timing import summarize


def _nilearn(events, data, motion, trial: int, noise_model: str) -> tuple[float, np.ndarray]:
    """nilearn's refit for one trial: (milliseconds, the probe's effect size per voxel)."""
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel

    n, v = data.shape
    img = nib.Nifti1Image(data.T.reshape(v, 1, 1, n), np.eye(4))
    mask = nib.Nifti1Image(np.ones((v, 1, 1), np.uint8), np.eye(4))
    kinds = ["probe" if k == trial else "reference" for k in range(len(events))]
    frame = pd.DataFrame({"onset": events.onset, "duration": events.duration, "trial_type": kinds})
    t0 = time.perf_counter()
    model = FirstLevelModel(t_r=1.5, slice_time_ref=0, hrf_model="glover", drift_model="cosine", high_pass=0.01,
                            mask_img=mask, signal_scaling=False, smoothing_fwhm=None, noise_model=noise_model,
                            minimize_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, events=frame, confounds=pd.DataFrame(motion, columns=[f"m{i}" for i in range(6)]))
        effect = model.compute_contrast("probe", output_type="effect_size")
    return (time.perf_counter() - t0) * 1e3, np.asarray(effect.dataobj).reshape(-1)


RunMaker = Callable[[int, int, int], tuple]  # (n_voxels, volumes, seed) -> (events, data, motion confounds)


def bench_glm(make_run: RunMaker, n_voxels: int | None = None, volumes: int = 192, nilearn_trials: int = 5,
              seed: int = 0) -> dict:
    """Median and p99 per-trial estimate at the end of a run, for 'ols' and 'ar1', and nilearn's refit.

    Also the per-volume cost of keeping the running products up to date (paid once per volume, not
    per trial), so the per-trial figure hides nothing.
    """
    from rtdecode.glm.incremental import GLMSettings, IncrementalGLM

    sizes = [n_voxels] if n_voxels else [8627, 15724]
    result: dict = {"stage": "glm", "volumes": volumes}
    for v in sizes:
        events, data, motion = make_run(v, volumes, seed)
        for model in ("ols", "ar1"):
            glm = IncrementalGLM(events, v, GLMSettings(noise_model=model), volumes)
            add_ms = []
            for t in range(volumes):
                a = time.perf_counter()
                glm.add(t, data[t], motion[t])
                add_ms.append((time.perf_counter() - a) * 1e3)
            glm.estimate(0, version="endofrun")  # warm-up: first call sizes the scratch buffers
            estimates = [glm.estimate(j, version="endofrun") for j in range(len(events))]
            s = summarize([e.estimate_ms for e in estimates])
            trials = list(range(0, len(events), max(len(events) // nilearn_trials, 1)))[:nilearn_trials]
            refs = [_nilearn(events, data, motion, j, model) for j in trials]
            ref = [ms for ms, _ in refs]
            parity = [float(np.corrcoef(beta, estimates[j].beta)[0, 1]) for j, (_, beta) in zip(trials, refs, strict=True)]
            key = f"{model}_{v}"
            result[f"{key}_nilearn_r_min"] = min(parity)  # same data, same trial: our beta vs nilearn's
            result[f"{key}_median_ms"] = s["median_ms"]
            result[f"{key}_p99_ms"] = s["p99_ms"]
            result[f"{key}_per_volume_update_ms"] = float(np.median(add_ms))
            result[f"{key}_nilearn_median_ms"] = float(np.median(ref))
            result[f"{key}_speedup"] = float(np.median(ref) / s["median_ms"])
        result.update(bench_refine(events, data, motion))
    return result


def bench_refine(events, data: np.ndarray, motion: np.ndarray, members: int = 12, pool: int = 2000,
                 components: int = 3, seed: int = 0) -> dict:
    """Per-volume cost of refining: every open trial re-estimated at each volume (AR(1)), from the volume's
    arrival (its products included) to its last estimate; Real-time MindEye's estimator, and with
    ``members`` HRF groups and ``components`` noise components (a synthetic tuning: the cost does not
    depend on which voxel chose which member)."""
    from rtdecode.glm.hrf_library import library_params
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.tuning import GLMTuning
    from rtdecode.glm.voxelwise import make_glm

    volumes, v = data.shape
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(library_params()), members, replace=False)
    tuning = GLMTuning(rng.choice(chosen, v), library_params(), np.sort(rng.choice(v, min(pool, v), replace=False)),
                       np.zeros(v), components, np.zeros(1))
    out: dict = {}
    for name, settings in (("refine_glover", GLMSettings(refine=True)),
                           ("refine_library_denoise", GLMSettings(refine=True, hrf="library", denoise=components))):
        glm = make_glm(events, v, settings, volumes, tuning)
        per_volume, per_trial, counts = [], [], []
        for t in range(volumes):
            a = time.perf_counter()
            glm.add(t, data[t], motion[t])
            due = glm.due()
            for j, n, version in due:
                per_trial.append(glm.estimate(j, n, version).estimate_ms)
            per_volume.append((time.perf_counter() - a) * 1e3)
            counts.append(len(due))
        busy = [ms for ms, c in zip(per_volume, counts, strict=True) if c]
        s = summarize(busy)
        out[f"{name}_{v}_per_volume_median_ms"] = s["median_ms"]
        out[f"{name}_{v}_per_volume_p99_ms"] = s["p99_ms"]
        out[f"{name}_{v}_per_volume_max_ms"] = float(max(busy))
        out[f"{name}_{v}_trials_per_volume_max"] = int(max(counts))
        out[f"{name}_{v}_per_trial_median_ms"] = float(np.median(per_trial))
    return out
