"""``rtdecode bench betas``: how much better, and how much sooner, real-time betas get.

A simulated visit (``physiology = "varied"``: per-person and per-voxel HRF timing, shared slow noise;
docs/simulated-brain.md) of one calibration hour and a few real-time runs whose images the hour never
shows. For each configuration it estimates every trial of the real-time runs at 7.5 s after onset
(Real-time MindEye's fast tier), at 12 s and at the end of the run, and reports:

- beta-to-truth correlation: per visual voxel, over the real-time trials, then the median;
- held-out 50-way top-1, brain to image: a ridge map from betas to the images' stand-in tokens,
  fitted on the calibration hour, retrieving each trial's image among 50 real-time trials (30 draws).

Configurations: (a) Real-time MindEye's (Glover, motion, AR(1); trained on end-of-run betas),
(b) + per-voxel HRFs, (c) + the calibration hour's noise subtracted (count chosen for each tier),
(r) issue 20's noise components re-fitted as confounds, (d) + matched training (trained on real-time
betas at the tier's own delay), (e) library + subtraction, (o) the oracle: each voxel the library
member nearest its true HRF peak and the simulated shared noise removed exactly. Beside voxel r,
the pattern correlation: per trial, across visual voxels, of z-scored estimates and z-scored truth
(what a decoder that z-scores its input sees), the mean over trials. The decoder is a ridge map, not
MindEye2: it measures the betas, which is what changes between rows.

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
    "a": ("Real-time MindEye (Glover, motion, AR(1), trained end-of-run)", dict(hrf="glover", denoise="", matched=False)),
    "b": ("+ per-voxel HRFs (library)", dict(hrf="library", denoise="", matched=False)),
    "c": ("+ the hour's noise subtracted (denoise auto)", dict(hrf="glover", denoise="subtract", matched=False)),
    "r": ("noise components re-fitted in each fit (issue 20)", dict(hrf="glover", denoise="regress", matched=False)),
    "d": ("+ matched training (train on betas at the tier's delay)", dict(hrf="glover", denoise="", matched=True)),
    "e": ("library + subtraction", dict(hrf="library", denoise="subtract", matched=False)),
    "o": ("oracle: true-peak member, shared noise removed", dict(hrf="oracle", denoise="oracle", matched=False)),
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
    no_grid: bool = False  # HRF choice without voxel positions (issue 20's shrinkage towards the person)
    max_components: int = 6  # noise components tried (glm-tune tries 10; auto chose at most 3 here)
    top1: bool = True  # False: betas of the calibration hour are not estimated per configuration (no top-1)
    criterion: str = "encoding"  # what scores the tuning: "encoding" (the images' tokens) or "repeats" (issue 20's)


@dataclass
class RunData:
    events: object
    series: np.ndarray  # (frames, mask voxels)
    motion: np.ndarray  # (frames, 6) confounds: zeros (no motion simulated at this level)
    truth: np.ndarray  # (visual voxels, trials) true betas, %
    images: list[str]
    hrf_peak: np.ndarray  # (visual voxels,) true HRF peak time (s), as hrf_library.peak_times measures it
    clean: np.ndarray | None = None  # the series without its simulated shared noise (for the oracle)


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
    from rtdecode.glm.hrf_library import VoxelGrid, peak_times

    runs, mask, roi_cols, grid, peaks = [], None, None, None, None
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
            grid = VoxelGrid(np.stack(np.unravel_index(run.brain_index[mask], run.shape), 1), (run.voxel_mm,) * 3)
            h = run.hrf
            peaks = peak_times(np.stack([np.broadcast_to(np.asarray(v, float), (len(run.roi_index),)) for v in
                                         (h.peak_s, h.undershoot_s, h.dispersion, h.ratio)], 1))
        series = run.masked_series(mask, seed=k)
        runs.append(RunData(run.events, series, np.zeros((len(series), 6)), run.betas, list(run.events.image),
                            peaks, (series - run.structured_noise(mask)).astype(np.float32)))
    tokens = calib.latent.tokens([index_of(i) for r in runs for i in r.images])
    seen = {i for r in runs[: setup.calibration_runs] for i in r.images}
    unseen = {i for r in runs[setup.calibration_runs:] for i in r.images}
    if seen & unseen:
        raise AssertionError("a real-time image was shown in the calibration hour")
    info = {"mask_voxels": int(len(mask)), "visual_voxels": int(len(roi_cols)),
            "person_peak_s": float(np.median(runs[0].hrf_peak))}
    return runs, roi_cols, {"tokens": tokens.reshape(len(tokens), -1), "grid": grid, **info}


def estimates(runs: list[RunData], settings, tuning, delays: list[float | None], clean: bool = False) -> dict:
    """{delay: (trials, voxels)} for every run, each trial at ``delay`` s after onset (None: end of run);
    ``clean``: from the series without their shared noise (the oracle)."""
    from rtdecode.glm.voxelwise import make_glm

    out: dict = {d: [] for d in delays}
    for run in runs:
        series = run.clean if clean else run.series
        glm = make_glm(run.events, series.shape[1], settings, len(series), tuning)
        for t in range(len(series)):
            glm.add(t, series[t], run.motion[t])
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


def pattern_correlation(est: np.ndarray, truth: np.ndarray) -> float:
    """Mean over trials of the correlation across voxels of per-voxel z-scored estimates and truth."""
    e, t = zscore(est), zscore(truth)
    e, t = e - e.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    return float(np.mean(np.sum(e * t, 1) / np.maximum(np.sqrt(np.sum(e * e, 1) * np.sum(t * t, 1)), 1e-12)))


def hrf_recovery(tuning, runs: list[RunData], roi_cols: np.ndarray) -> dict:
    """Share of visual voxels whose chosen member peaks within 0.5 s of their true HRF's peak: the more
    responsive half, and late voxels (true peak at least 1 s after the person's median); beside it the
    upper bound, each voxel given the member whose peak is nearest its true one (measured the same way)."""
    from rtdecode.glm.hrf_library import peak_times

    member_peak = peak_times(tuning.library)
    truth = runs[0].hrf_peak
    ok = np.abs(member_peak[tuning.hrf_index[roi_cols]] - truth) <= 0.5
    best = np.abs(member_peak[np.argmin(np.abs(member_peak[None, :] - truth[:, None]), 1)] - truth) <= 0.5
    responsive = tuning.reliability[roi_cols] > np.median(tuning.reliability[roi_cols])
    late = truth >= np.median(truth) + 1.0
    return {"within": float(np.mean(ok[responsive])), "late_within": float(np.mean(ok[late])),
            "late_bound": float(np.mean(best[late])), "late_voxels": int(late.sum()),
            "responsive_voxels": int(responsive.sum()),
            "median_error_s": float(np.median(member_peak[tuning.hrf_index[roi_cols]] - truth))}


def oracle_tuning(tuning, runs: list[RunData], roi_cols: np.ndarray):
    """The tuning with each visual voxel's member the one whose peak is nearest its true HRF's peak."""
    from dataclasses import replace as dc_replace

    from rtdecode.glm.hrf_library import peak_times

    member_peak = peak_times(tuning.library)
    index = tuning.hrf_index.copy()
    index[roi_cols] = np.argmin(np.abs(member_peak[None, :] - runs[0].hrf_peak[:, None]), 1)
    return dc_replace(tuning, hrf_index=index)


def _tier_settings(c: dict, tuning, oracle, delay: float | None):
    """(settings, tuning, clean) of a configuration at one tier: the subtraction's count is the tier's own."""
    from rtdecode.glm.incremental import GLMSettings

    if c["hrf"] == "oracle":
        return GLMSettings(hrf="library"), oracle, True
    mode = c["denoise"] or "subtract"
    count = {"": 0, "subtract": tuning.components_for(delay), "regress": tuning.n_components}[c["denoise"]]
    return GLMSettings(hrf=c["hrf"], denoise=count, denoise_mode=mode), tuning, False


def measure_seed(setup: BetasSetup, seed: int, configs: str = "abcreo", log=print) -> dict:
    from models.retrieval import n_way_top1
    from rtdecode.glm.tuning import TuningRun, tune

    t0 = time.monotonic()
    runs, roi_cols, info = simulate(setup, seed)
    log(f"seed {seed}: simulated {len(runs)} runs, {info['mask_voxels']} mask voxels "
        f"({info['visual_voxels']} visual) in {time.monotonic() - t0:.0f} s")
    cal, live = runs[: setup.calibration_runs], runs[setup.calibration_runs:]
    n_cal = sum(len(r.images) for r in cal)
    tokens, grid = info.pop("tokens"), info.pop("grid")  # targets and positions, not results to save
    targets = tokens - tokens[:n_cal].mean(0)
    y_cal, y_live = targets[:n_cal], targets[n_cal:]
    groups = np.concatenate([np.full(len(r.images), i) for i, r in enumerate(cal)])
    truth = np.concatenate([r.truth.T for r in live])  # (trials, visual voxels)
    t = time.monotonic()
    lookup = dict(zip([i for r in cal for i in r.images], tokens[:n_cal], strict=True))  # the hour's images only
    tuning = tune([TuningRun(r.events.onset, r.events.duration, r.series, r.motion, np.ones(len(r.series), bool),
                             tuple(r.images)) for r in cal], 1.5, max_components=setup.max_components,
                  grid=None if setup.no_grid else grid, tier_delay_s=TIERS[0][1],
                  features=lambda ids: np.stack([lookup[i] for i in ids]), criterion=setup.criterion)
    oracle = oracle_tuning(tuning, runs, roi_cols)
    info["tuning_s"] = time.monotonic() - t
    info["hrf_recovery"] = rec = hrf_recovery(tuning, runs, roi_cols)
    info.update(n_components=tuning.n_components, fast_components=tuning.fast_components,
                end_components=tuning.end_components, pool_voxels=int(len(tuning.pool)), notes=tuning.notes)
    log(f"   tuning {info['tuning_s']:.0f} s: pool {len(tuning.pool)}, regress {tuning.n_components}, subtract "
        f"{tuning.fast_components} (fast) / {tuning.end_components} (end); HRF peak within 0.5 s for "
        f"{rec['within']:.0%} of responsive voxels, {rec['late_within']:.0%} of {rec['late_voxels']} late ones "
        f"(bound {rec['late_bound']:.0%})")
    delays = [d for _, d in TIERS]
    cache: dict = {}
    rows = {}
    for key in configs:
        name, c = CONFIGS[key]
        row = {"name": name}
        for tier, d in TIERS:
            settings, tun, clean = _tier_settings(c, tuning, oracle, d)
            skey = (key if c["hrf"] == "oracle" else settings.hrf, settings.denoise, settings.denoise_mode)
            if skey not in cache:
                t = time.monotonic()
                cache[skey] = (estimates(cal, settings, tun, delays, clean) if setup.top1 else None,
                               estimates(live, settings, tun, delays, clean))
                log(f"   GLM {skey}: {time.monotonic() - t:.0f} s")
            cal_b, live_b = cache[skey]
            top1, alpha = float("nan"), None
            if setup.top1:
                w, alpha = fit_ridge(zscore(cal_b[d if c["matched"] else None]), y_cal, groups)
                top1 = n_way_top1(zscore(live_b[d]) @ w, y_live, setup.ways, setup.draws, seed)[0]
            row[tier] = {"top1": top1,
                         "truth_r": truth_correlation(live_b[d][:, roi_cols], truth),
                         "pattern_r": pattern_correlation(live_b[d][:, roi_cols], truth), "alpha": alpha}
        rows[key] = row
        log(f"   ({key}) " + "  ".join(f"{tier}: {row[tier]['top1']:.1%} r={row[tier]['truth_r']:.3f} "
                                      f"p={row[tier]['pattern_r']:.3f}" for tier, _ in TIERS))
    info["seconds"] = time.monotonic() - t0
    return {"seed": seed, "rows": rows, "info": info}


def table(results: list[dict]) -> str:
    """Mean over seeds (and the range of top-1) as a markdown table, then the goal's gap figures."""
    keys = list(results[0]["rows"])
    show = not all(np.isnan(r["rows"][k][t]["top1"]) for r in results for k in keys for t, _ in TIERS)  # --no-top1
    lines = ["| configuration | " + " | ".join((f"{t}: top-1 | " if show else "") + f"{t}: r | {t}: pattern r"
                                             for t, _ in TIERS) + " |",
             "|---|" + ("---:|" * (3 if show else 2)) * len(TIERS)]
    for k in keys:
        cells = []
        for tier, _ in TIERS:
            top = [r["rows"][k][tier]["top1"] for r in results]
            if show:
                cells.append(f"{np.mean(top):.1%}" + (f" ({min(top):.0%}-{max(top):.0%})" if len(top) > 1 else ""))
            cells += [f"{np.mean([r['rows'][k][tier]['truth_r'] for r in results]):.3f}",
                      f"{np.mean([r['rows'][k][tier].get('pattern_r', np.nan) for r in results]):.3f}"]
        lines.append(f"| ({k}) {results[0]['rows'][k]['name']} | " + " | ".join(cells) + " |")
    lines += ["", f"{len(results)} seed(s); chance 2 %."]
    if {"a", "e", "o"} <= set(keys):
        for tier, _ in (TIERS[0], TIERS[-1]):
            for what in ("truth_r", "pattern_r"):
                a, e, o = (np.mean([r["rows"][k][tier][what] for r in results]) for k in "aeo")
                per_seed = [(r["rows"]["e"][tier][what] - r["rows"]["a"][tier][what])
                            / (r["rows"]["o"][tier][what] - r["rows"]["a"][tier][what]) for r in results]
                lines.append(f"{tier}, {what}: (e) {e:.3f} closes {(e - a) / (o - a):.0%} of the gap between (a) "
                             f"{a:.3f} and the oracle (o) {o:.3f} (per seed: "
                             + ", ".join(f"{v:.0%}" for v in per_seed) + ")")
    return "\n".join(lines)


def _configs(text: str) -> str:
    """--configs: letters of CONFIGS, at least one."""
    unknown = sorted(set(text) - set(CONFIGS))
    if not text or unknown:
        raise argparse.ArgumentTypeError(f"expected letters of {''.join(CONFIGS)} (e.g. aeo), got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    d = BetasSetup()
    p = argparse.ArgumentParser(prog="rtdecode bench betas", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="simulated visits to measure, one per seed, e.g. --seeds 0 1 2 (default: 0)")
    p.add_argument("--configs", type=_configs, default="abcreo",
                   help="which configurations, one letter each (default: abcreo): " + "; ".join(
                       f"{k} {name}" for k, (name, _) in CONFIGS.items()))
    p.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    p.add_argument("--calibration-runs", type=int, default=None,
                   help=f"runs of the calibration hour the tuning and decoder learn from (default: {d.calibration_runs})")
    p.add_argument("--realtime-runs", type=int, default=None,
                   help=f"real-time runs measured, of images the hour never shows (default: {d.realtime_runs})")
    p.add_argument("--voxels", type=int, default=None,
                   help=f"visual voxels simulated; the mask holds as many again that do not respond (default: "
                        f"{d.roi_voxels})")
    p.add_argument("--physiology", choices=("varied", "venous", "canonical"), default="varied",
                   help="HRF timing of the simulated people (docs/simulated-brain.md; default: varied)")
    p.add_argument("--no-grid", action="store_true",
                   help="choose HRFs without voxel positions (each voxel shrunk towards the person's curve)")
    p.add_argument("--no-top1", action="store_true", help="betas only: skip the ridge decoder (and the hour's betas)")
    p.add_argument("--criterion", choices=("encoding", "repeats"), default="encoding",
                   help="what scores the GLM tuning (docs/glm.md): the images' tokens, or repeat reliability "
                        "(default: encoding)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="print one table from earlier --out folders (seeds run as separate processes)")
    args = p.parse_args(argv)
    if args.merge:
        merged = [r for folder in args.merge for r in json.loads((folder / "results.json").read_text())["results"]]
        print(table(merged))
        return 0
    setup = BetasSetup(physiology=args.physiology, no_grid=args.no_grid, top1=not args.no_top1, criterion=args.criterion)
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
