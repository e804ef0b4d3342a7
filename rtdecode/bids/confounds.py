"""A run's confounds table in fMRIPrep's vocabulary, missing volumes included.

fMRIPrep's columns and units (trans mm, rot radians, Power FD, DVARS on a median-1000 scale,
standardised DVARS). Every row holds a number (the first row's FD and DVARS are n/a, as fMRIPrep
writes them), so nilearn's ``load_confounds`` and ``first_level_from_bids`` read it as they read
fMRIPrep's. A volume that never arrived gets the mean of its nearest received neighbours' values, an
FD and std_dvars of :data:`MISSING_FLAG` (above every scrubbing threshold, so nilearn's scrub drops
it) and its own one-hot ``motion_outlier_NN`` column (spike regression drops it in a GLM).
"""

from __future__ import annotations

import numpy as np

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
# fMRIPrep's expansions (Satterthwaite et al. 2013), which nilearn's motion="full" asks for.
EXPANSIONS = tuple(f"{c}{e}" for c in MOTION for e in ("_derivative1", "_power2", "_derivative1_power2"))
COLUMNS = (*MOTION, *EXPANSIONS, "framewise_displacement", "dvars", "std_dvars")
MISSING_FLAG = 999.0  # FD (mm) and std_dvars of a volume that never arrived: no threshold keeps it
DVARS_SCALE = 1000.0  # fMRIPrep (nipype ComputeDVARS): the masked series' median scaled to 1000


def std_dvars(vectors: np.ndarray) -> np.ndarray:
    """DVARS standardised by its expectation under temporal independence with AR(1) (Nichols 2013, as
    fMRIPrep's nipype ComputeDVARS): robust per-voxel SD and lag-1 autocorrelation of the masked series."""
    if len(vectors) < 3:
        return np.full(max(len(vectors) - 1, 0), np.nan)
    x = vectors.astype(np.float64)
    sd = (np.percentile(x, 75, axis=0) - np.percentile(x, 25, axis=0)) / 1.349
    centred = x - x.mean(axis=0)
    denom = (centred * centred).sum(axis=0)
    ar1 = np.divide((centred[1:] * centred[:-1]).sum(axis=0), denom, out=np.zeros(x.shape[1]), where=denom > 0)
    expected = np.mean(sd * np.sqrt(np.maximum(2 * (1 - ar1), 0)))
    dvars = np.sqrt(np.mean(np.diff(x, axis=0) ** 2, axis=1))
    return dvars / expected if expected > 0 else np.full(len(dvars), np.nan)


def dvars_scale(vectors: np.ndarray) -> float:
    """The factor fMRIPrep's ``dvars`` column is on: 1000 over the median of the masked series."""
    median = float(np.median(vectors)) if vectors.size else 0.0
    return DVARS_SCALE / median if median > 0 else 1.0


def _neighbour_mean(values: dict[int, float], i: int) -> float:
    before = [j for j in values if j < i]
    after = [j for j in values if j > i]
    near = ([values[max(before)]] if before else []) + ([values[min(after)]] if after else [])
    return float(np.mean(near)) if near else 0.0


def confound_rows(rows: list[dict], vectors: np.ndarray, n: int) -> tuple[list[dict], list[int]]:
    """The run's ``n`` rows from the live record's ``rows`` (status ok|missing; rotations in degrees)
    and the received volumes' masked ``vectors``; returns (rows, missing volume indexes)."""
    ok = {int(r["volume"]): r for r in rows if r["status"] == "ok"}
    order = sorted(ok)
    missing = [i for i in range(n) if i not in ok]
    std = dict(zip(order[1:], std_dvars(vectors), strict=False))
    scale = dvars_scale(vectors)
    measured: dict[str, dict[int, float]] = {c: {} for c in COLUMNS}
    for i in order:
        r = ok[i]
        for c in MOTION:
            measured[c][i] = float(np.deg2rad(float(r[c]))) if c.startswith("rot") else float(r[c])
        if i != order[0]:  # the first received volume has nothing before it to move from
            measured["framewise_displacement"][i] = float(r["framewise_displacement"])
            measured["dvars"][i] = float(r["dvars"]) * scale
            if np.isfinite(std.get(i, np.nan)):
                measured["std_dvars"][i] = float(std[i])
    out = []
    for i in range(n):
        row: dict = {}
        for c in (c for c in COLUMNS if c not in EXPANSIONS):
            if i in measured[c]:
                row[c] = measured[c][i]
            elif i in ok:  # the first received volume: n/a in row 0 (fMRIPrep), else no move from the filled ones
                row[c] = "n/a" if i == 0 else 0.0
            elif c in ("framewise_displacement", "std_dvars"):
                row[c] = MISSING_FLAG
            else:
                row[c] = _neighbour_mean(measured[c], i)
        for k, j in enumerate(missing):
            row[outlier_column(k)] = int(i == j)
        out.append(row)
    _expand(out)
    return out, missing


def _expand(rows: list[dict]) -> None:
    """fMRIPrep's derivative (backward difference, n/a in the first row) and square of each motion column."""
    for c in MOTION:
        for i, row in enumerate(rows):
            d = "n/a" if i == 0 else row[c] - rows[i - 1][c]
            row.update({f"{c}_derivative1": d, f"{c}_power2": row[c] ** 2,
                        f"{c}_derivative1_power2": "n/a" if i == 0 else d ** 2})


def outlier_column(k: int) -> str:
    return f"motion_outlier_{k:02d}"


def description(missing: list[int], scale: float = 1.0) -> dict:
    """The confounds table's JSON sidecar; ``scale``: the factor dvars was multiplied by (read back by
    :func:`rtdecode.base.session.load_finalized`)."""
    filled = (f"a volume that never arrived ({', '.join(map(str, missing)) or 'none in this run'}) has the mean "
              "of its nearest received neighbours' value")
    return {
        **{c: {"Units": "mm", "Description": f"translation, {filled}"} for c in ("trans_x", "trans_y", "trans_z")},
        **{c: {"Units": "rad", "Description": f"rotation, {filled}"} for c in ("rot_x", "rot_y", "rot_z")},
        **{c: {"Description": "as fMRIPrep: the backward difference (n/a in the first row), the square, and the "
                              "square of the difference"} for c in EXPANSIONS},
        "framewise_displacement": {"Units": "mm", "Description": (
            f"Power et al. 2012, 50 mm head radius; n/a in the first row; {MISSING_FLAG:g} for a volume that never "
            "arrived (so any scrubbing threshold drops it)")},
        "dvars": {"Description": "RMS over the mask of the volume-to-volume difference, the masked series scaled so "
                                 f"its median is {DVARS_SCALE:g} (as fMRIPrep); {filled}", "ScaleFactor": scale},
        "std_dvars": {"Description": f"DVARS over its expectation under AR(1) (Nichols 2013); {MISSING_FLAG:g} for a "
                                     "volume that never arrived"},
        **{outlier_column(k): {"Description": f"1 at volume {j} (0-based), which never arrived; 0 elsewhere"}
           for k, j in enumerate(missing)},
    }
