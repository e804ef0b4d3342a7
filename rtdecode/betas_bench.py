"""``rtdecode bench betas``: how much better, and how much sooner, real-time betas get (issue 20).

A simulated visit (``physiology = "varied"``: per-person and per-voxel HRF timing, shared slow noise;
docs/simulated-brain.md) of one calibration hour and a few real-time runs whose images the hour never
shows. For each configuration it estimates every trial of the real-time runs at 7.5 s after onset
(Real-time MindEye's fast tier), at 12 s and at the end of the run, and reports:

- beta-to-truth correlation: per visual voxel, over the real-time trials, then the median;
- held-out 50-way top-1, brain to image: a ridge map from betas to the images' stand-in tokens,
  fitted on the calibration hour, retrieving each trial's image among 50 real-time trials (30 draws).

Configurations: (a) Real-time MindEye's (Glover, motion, AR(1); trained on end-of-run betas),
(b) + per-voxel HRFs, (c) + noise components, (d) + matched training (trained on real-time betas at
the tier's own delay; end-of-run betas for the end-of-run column), (e) all together. The decoder is
a ridge map, not MindEye2: it measures the betas, which is what changes between rows.

Volumes are not written here: the masked series are simulated directly (no head motion; the
motion columns are in the design all the same, as Real-time MindEye fits them). The mask holds the
visual voxels and, as nsdgeneral does, as many again that do not respond to the task.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

TIERS = (("fast 7.5 s", 7.5), ("12 s", 12.0), ("end of run", None))
CONFIGS = {
    "a": ("Real-time MindEye (Glover, motion, AR(1), trained end-of-run)", dict(hrf="glover", denoise=False, matched=False)),
    "b": ("+ per-voxel HRFs (library)", dict(hrf="library", denoise=False, matched=False)),
    "c": ("+ noise components (denoise auto)", dict(hrf="glover", denoise=True, matched=False)),
    "d": ("+ matched training (train on betas at the tier's delay)", dict(hrf="glover", denoise=False, matched=True)),
    "e": ("all together", dict(hrf="library", denoise=True, matched=True)),
}


@dataclass(frozen=True)
class BetasSetup:
    calibration_runs: int = 11  # the hour: 11 runs of 63 trials, Real-time MindEye's paradigm
    realtime_runs: int = 3
    roi_voxels: int = 2000
    pool_ratio: float = 1.0  # non-responsive voxels in the mask per visual voxel
    physiology: str = "varied"
    reliability: float = 0.3
    ways: int = 50
    draws: int = 30


@dataclass
class RunData:
    events: object
    series: np.ndarray  # (frames, mask voxels)
    motion: np.ndarray  # (frames, 6) confounds: zeros (no motion simulated at this level)
    truth: np.ndarray  # (visual voxels, trials) true betas, %
    images: list[str]
    hrf_peak: np.ndarray  # (visual voxels,) true HRF delay


def simulate(setup: BetasSetup, seed: int) -> tuple[list[RunData], np.ndarray, dict]:
    """The calibration hour (NSD's share of repeated images) then the real-time runs (images the hour
    never shows, each once), as masked series; which mask columns are visual voxels."""
    from rtdecode.gallery.builtin import index_of
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    spec = SubjectSpec(name=f"b{seed}", n_voxels=setup.roi_voxels, seed=100 + seed, reliability=setup.reliability,
                       physiology=setup.physiology)
    calib = Visit(spec, n_runs=setup.calibration_runs, seed=seed)
    live = Visit(spec, n_runs=setup.realtime_runs, n_repeated=0, seed=seed + 1000, exclude=calib.shown,
                 latent=calib.latent)
    runs, mask, roi_cols = [], None, None
    for k, (visit, r) in enumerate([(calib, r) for r in range(calib.n_runs)] + [(live, r) for r in range(live.n_runs)]):
        run = visit.run(r)
        if mask is None:
            rng = np.random.default_rng([seed, 31])
            roi_in_brain = np.searchsorted(run.brain_index, run.roi_index)
            xyz = np.indices(run.shape).reshape(3, -1).T[run.brain_index] @ run.affine[:3, :3].T + run.affine[:3, 3]
            near = np.flatnonzero((xyz[:, 1] < -30) & ~np.isin(np.arange(len(xyz)), roi_in_brain))
            extra = rng.choice(near, min(len(near), int(setup.pool_ratio * len(roi_in_brain))), replace=False)
            mask = np.sort(np.r_[roi_in_brain, extra])
            roi_cols = np.flatnonzero(np.isin(mask, roi_in_brain))
        series = run.masked_series(mask, seed=k)
        runs.append(RunData(run.events, series, np.zeros((len(series), 6)), run.betas, list(run.events.image),
                            np.broadcast_to(np.asarray(run.hrf.peak_s, float), (len(run.roi_index),)).copy()))
    tokens = calib.latent.tokens([index_of(i) for r in runs for i in r.images])
    seen = {i for r in runs[: setup.calibration_runs] for i in r.images}
    unseen = {i for r in runs[setup.calibration_runs:] for i in r.images}
    if seen & unseen:
        raise AssertionError("a real-time image was shown in the calibration hour")
    info = {"mask_voxels": int(len(mask)), "visual_voxels": int(len(roi_cols)),
            "person_delay_s": float(np.median(runs[0].hrf_peak))}
    return runs, roi_cols, {"tokens": tokens.reshape(len(tokens), -1), **info}


def estimates(runs: list[RunData], settings, tuning, delays: list[float | None]) -> dict:
    """{delay: (trials, voxels)} for every run, each trial at ``delay`` s after onset (None: end of run)."""
    from rtdecode.glm.voxelwise import make_glm

    out: dict = {d: [] for d in delays}
    for run in runs:
        glm = make_glm(run.events, run.series.shape[1], settings, len(run.series), tuning)
        for t in range(len(run.series)):
            glm.add(t, run.series[t], run.motion[t])
        for j in range(len(run.events)):
            for d in delays:
                n = len(run.series) if d is None else min(glm.frames_at(j, d), len(run.series))
                out[d].append(glm.estimate(j, n_frames=n, version="endofrun").beta)
    return {d: np.stack(v) for d, v in out.items()}


def zscore(b: np.ndarray) -> np.ndarray:
    return (b - b.mean(0)) / (b.std(0) + 1e-6)


def fit_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas=(1e2, 1e3, 1e4, 1e5)) -> tuple[np.ndarray, float]:
    """Ridge weights from z-scored betas to centred targets; alpha by leave-runs-out cosine fit (3 folds).
    One SVD per fold serves every alpha."""
    def svd(a):
        return np.linalg.svd(a, full_matrices=False)

    def weights(parts, ytr, alpha):
        u, s, vt = parts
        return vt.T @ ((s / (s ** 2 + alpha))[:, None] * (u.T @ ytr))

    folds = np.array_split(np.unique(groups), 3)
    score = {a: [] for a in alphas}
    for f in folds:
        te = np.isin(groups, f)
        parts = svd(x[~te])
        for a in alphas:
            p = x[te] @ weights(parts, y[~te], a)
            score[a].append(np.mean(np.sum(_unit(p) * _unit(y[te]), 1)))
    best = max(alphas, key=lambda a: np.mean(score[a]))
    return weights(svd(x), y, best), best


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)


def truth_correlation(est: np.ndarray, truth: np.ndarray) -> float:
    """Median over voxels of the correlation across trials between estimated and true betas."""
    e, t = est - est.mean(0), truth - truth.mean(0)
    r = np.sum(e * t, 0) / np.maximum(np.sqrt(np.sum(e * e, 0) * np.sum(t * t, 0)), 1e-12)
    return float(np.median(r))


def hrf_recovery(tuning, runs: list[RunData], roi_cols: np.ndarray, tolerance: int = 2) -> dict:
    """Share of task-responsive visual voxels whose chosen member is within ``tolerance`` members of the
    member nearest their true delay (members are 0.25 s apart)."""
    from rtdecode.glm.hrf_library import nearest_member

    truth = nearest_member(runs[0].hrf_peak, tuning.library)
    chosen = tuning.hrf_index[roi_cols]
    responsive = tuning.reliability[roi_cols] > np.median(tuning.reliability[roi_cols])
    off = np.abs(chosen - truth)
    return {"within": float(np.mean(off[responsive] <= tolerance)), "tolerance_members": tolerance,
            "exact": float(np.mean(off[responsive] == 0)), "responsive_voxels": int(responsive.sum())}


def measure_seed(setup: BetasSetup, seed: int, configs: str = "abcde", log=print) -> dict:
    from models.retrieval import n_way_top1
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.tuning import TuningRun, tune

    t0 = time.monotonic()
    runs, roi_cols, info = simulate(setup, seed)
    log(f"seed {seed}: simulated {len(runs)} runs, {info['mask_voxels']} mask voxels "
        f"({info['visual_voxels']} visual) in {time.monotonic() - t0:.0f} s")
    cal, live = runs[: setup.calibration_runs], runs[setup.calibration_runs:]
    n_cal = sum(len(r.images) for r in cal)
    tokens = info.pop("tokens")  # (trials, token dims): targets, not a result to save
    targets = tokens - tokens[:n_cal].mean(0)
    y_cal, y_live = targets[:n_cal], targets[n_cal:]
    groups = np.concatenate([np.full(len(r.images), i) for i, r in enumerate(cal)])
    truth = np.concatenate([r.truth.T for r in live])  # (trials, visual voxels)
    t = time.monotonic()
    tuning = tune([TuningRun(r.events.onset, r.events.duration, r.series, r.motion, np.ones(len(r.series), bool),
                             tuple(r.images)) for r in cal], 1.5)
    info["tuning_s"] = time.monotonic() - t
    info["hrf_recovery"] = hrf_recovery(tuning, runs, roi_cols)
    info["n_components"] = tuning.n_components
    info["pool_voxels"] = int(len(tuning.pool))
    log(f"   tuning {info['tuning_s']:.0f} s: {tuning.n_components} components, pool {len(tuning.pool)}, "
        f"HRF within 0.5 s for {info['hrf_recovery']['within']:.0%} of responsive visual voxels")
    delays = [d for _, d in TIERS]
    cache: dict = {}
    rows = {}
    for key in configs:
        name, c = CONFIGS[key]
        settings = GLMSettings(hrf=c["hrf"], denoise=tuning.n_components if c["denoise"] else 0)
        skey = (settings.hrf, settings.denoise)
        if skey not in cache:
            t = time.monotonic()
            cache[skey] = (estimates(cal, settings, tuning, delays), estimates(live, settings, tuning, delays))
            log(f"   GLM {skey}: {time.monotonic() - t:.0f} s")
        cal_b, live_b = cache[skey]
        row = {"name": name}
        for tier, d in TIERS:
            train_on = d if c["matched"] else None
            w, alpha = fit_ridge(zscore(cal_b[train_on]), y_cal, groups)
            pred = zscore(live_b[d]) @ w
            row[tier] = {"top1": n_way_top1(pred, y_live, setup.ways, setup.draws, seed)[0],
                         "truth_r": truth_correlation(live_b[d][:, roi_cols], truth), "alpha": alpha}
        rows[key] = row
        log(f"   ({key}) " + "  ".join(f"{tier}: {row[tier]['top1']:.1%} r={row[tier]['truth_r']:.3f}" for tier, _ in TIERS))
    info["seconds"] = time.monotonic() - t0
    return {"seed": seed, "rows": rows, "info": info}


def table(results: list[dict]) -> str:
    """Mean over seeds (and the range) as a markdown table."""
    keys = list(results[0]["rows"])
    lines = ["| configuration | " + " | ".join(f"{t}: top-1 | {t}: r" for t, _ in TIERS) + " |",
             "|---|" + "---:|---:|" * len(TIERS)]
    for k in keys:
        cells = []
        for tier, _ in TIERS:
            top = [r["rows"][k][tier]["top1"] for r in results]
            rr = [r["rows"][k][tier]["truth_r"] for r in results]
            cells += [f"{np.mean(top):.1%}" + (f" ({min(top):.0%}-{max(top):.0%})" if len(top) > 1 else ""),
                      f"{np.mean(rr):.3f}"]
        lines.append(f"| ({k}) {results[0]['rows'][k]['name']} | " + " | ".join(cells) + " |")
    a, e = keys[0], keys[-1]
    lines.append("")
    lines.append(f"{len(results)} seed(s); chance 2 %.")
    for what, key, fmt in (("top-1", "top1", ".1%"), ("beta-to-truth r", "truth_r", ".3f")):
        fast = np.mean([r["rows"][a]["fast 7.5 s"][key] for r in results])
        end = np.mean([r["rows"][a]["end of run"][key] for r in results])
        best = np.mean([r["rows"][e]["fast 7.5 s"][key] for r in results])
        closed = (best - fast) / (end - fast) if end > fast else float("nan")
        lines.append(f"{what}: ({e}) at the fast tier closes {closed:.0%} of the gap between ({a})'s fast tier "
                     f"({fast:{fmt}}) and ({a})'s end of run ({end:{fmt}}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtdecode bench betas", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--configs", default="abcde")
    p.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    p.add_argument("--calibration-runs", type=int, default=None)
    p.add_argument("--realtime-runs", type=int, default=None)
    p.add_argument("--voxels", type=int, default=None)
    p.add_argument("--physiology", choices=("varied", "canonical"), default="varied")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="print one table from earlier --out folders (seeds run as separate processes)")
    args = p.parse_args(argv)
    if args.merge:
        merged = [r for folder in args.merge for r in json.loads((folder / "results.json").read_text())["results"]]
        print(table(merged))
        return 0
    setup = BetasSetup(physiology=args.physiology)
    changes = {"calibration_runs": args.calibration_runs, "realtime_runs": args.realtime_runs, "roi_voxels": args.voxels}
    setup = replace(setup, **{k: v for k, v in changes.items() if v is not None})
    results = [measure_seed(setup, s, args.configs) for s in args.seeds]
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"setup": asdict(setup), "results": results}, indent=2))
        (args.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
