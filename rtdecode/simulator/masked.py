"""A run as masked voxel time series (no volumes, no files): what a GLM benchmark needs, made fast."""

from __future__ import annotations

import numpy as np

from rtdecode.base.events import Events
from rtdecode.gallery.builtin import image_id
from rtdecode.simulator.hrf import boxcar_responses
from rtdecode.simulator.paradigm import Paradigm
from rtdecode.simulator.scanner import motion_trajectory


def masked_run(n_voxels: int, volumes: int = 192, seed: int = 0) -> tuple[Events, np.ndarray, np.ndarray]:
    """Events, data (volumes x voxels, float32) and motion confounds (mm, degrees) of one run.

    Each voxel has AR(1) noise (rho 0 to 0.5), responses to every trial (the simulator's own HRF) on a
    baseline of 1000, and the head moves along a random trajectory (within 1 mm and 1 degree).
    """
    rng = np.random.default_rng(seed)
    base = Paradigm()
    fit = int((volumes * base.tr_s - base.lead_in_s - base.image_s) // (base.image_s + base.gap_s)) + 1
    par = Paradigm(volumes=volumes, trials=max(1, min(base.trials, fit)))  # a short run holds fewer trials
    events = par.events([image_id(i) for i in range(par.trials)])
    regressors = boxcar_responses(events.onset, events.duration, np.arange(volumes) * par.tr_s)
    rho = rng.uniform(0, 0.5, n_voxels)
    noise = np.zeros((volumes, n_voxels))
    for t in range(volumes):
        noise[t] = (rho * noise[t - 1] if t else 0) + rng.normal(0, 10, n_voxels)
    data = 1000 + regressors @ rng.normal(10, 8, (par.trials, n_voxels)) + noise
    motion = motion_trajectory(volumes, 1.0, 1.0, rng)
    return events, data.astype(np.float32), np.c_[motion[:, :3], np.rad2deg(motion[:, 3:])]
