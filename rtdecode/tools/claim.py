"""MindEye2's claim measured on the simulator, in a fair fight (issue 35): a model pretrained on other
people, then fine-tuned on one hour of a new person, against one trained from scratch on that hour, and
against one pretrained on people who share no code with the new person (scrambled codes).

``python -m rtdecode.tools.claim --out WORK`` prints the table docs/calibration.md gives;
``tests/test_calibration_claim.py`` (``make claim``) asserts it. Fair by construction:
- every new person is new: their seeds and names are no pretraining person's (checked by calibrate);
- their images are new: held-out images from the test pool, the rest from the new-person pool, which
  no pretraining person saw (``ClaimSetup.overlap`` reproduces the old overlap, labelled);
- every arm picks its own learning rate and epochs on a validation split of the hour's training trials
  (the same grid for each), never on the held-out images;
- one unit per new person (person k, fine-tuning seed k): the arms are compared pairwise over people.
Work runs in ``workers`` processes of one thread each; a unit still running at ``deadline_s`` is named.
A work folder keeps datasets, shared models and finished units (read back, not trained again), so sizes
(``--runs 1 2 4``) and pretraining seeds (``--pretrain-seed 1``: folders and units tagged ``-p1``) add up.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

ARMS = ("pretrained", "scrambled", "scratch")
PAIRS = (("pretrained", "scratch"), ("pretrained", "scrambled"), ("scrambled", "scratch"))


@dataclass(frozen=True)
class ClaimSetup:
    """The comparison's scale. Pretraining: 6 people x 4 sessions (24 times a new person's hour), 10
    epochs of batch 192; the same people with one scrambled code for the control arm."""

    pretrain_people: int = 6
    pretrain_sessions: int = 4
    pretrain_epochs: int = 10
    pretrain_batch: int = 192
    pretrain_lr: float = 2e-3
    new_people: int = 5
    images: int = 2400  # the built-in set: 1,400 pretraining images, 600 for new people, 400 test
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    epochs: tuple[int, ...] = (5, 10)  # at the full hour; scaled by runs for fewer runs (the same steps)
    runs: tuple[int, ...] = (11,)  # calibration runs trained on (held-out images: the same, all runs')
    arms: tuple[str, ...] = ARMS
    overlap: bool = False  # the new people's once-shown images from every training image (before issue 35)
    latent_dim: int = 32
    pretrain_seed: int = 0  # the shared models' seed; another samples the spread between pretraining runs
    workers: int = 2
    deadline_s: float = 0.0  # 0: none


def both_ways(evaluation: dict) -> float:
    return (evaluation["top1_brain_to_image"] + evaluation["top1_image_to_brain"]) / 2


def _specs(setup: ClaimSetup, group: str) -> list:
    from rtdecode.simulator.subjects import SubjectSpec, first_person

    if group == "new":
        first = first_person("new", 0)
        return [SubjectSpec(name=f"sim{first + i:02d}", n_voxels=611 + 13 * i, seed=first + i,
                            latent_dim=setup.latent_dim) for i in range(setup.new_people)]
    return [SubjectSpec(name=f"sim{1 + i:02d}", n_voxels=600 + 37 * i, seed=1 + i, latent_dim=setup.latent_dim,
                        scramble=1 if group == "scrambled" else 0) for i in range(setup.pretrain_people)]


def _latent(setup: ClaimSetup):
    from rtdecode.gallery.builtin import StimulusSet
    from rtdecode.simulator.subjects import LatentSpace

    return LatentSpace(dim=setup.latent_dim, stimuli=StimulusSet(n=setup.images))


def _shared(setup: ClaimSetup, group: str) -> str:
    """A shared model's folder name: ``shared-real``, or ``shared-real-p1`` for pretraining seed 1."""
    return f"shared-{group}" + (f"-p{setup.pretrain_seed}" if setup.pretrain_seed else "")


def _write(out: Path, setup: ClaimSetup, group: str) -> None:
    from rtdecode.simulator.trials import write_dataset

    if group == "new":
        write_dataset(out / "new", _specs(setup, "new"), sessions=1, latent=_latent(setup), seed=1,
                      role="new-overlap" if setup.overlap else "new")
    else:
        write_dataset(out / group, _specs(setup, group), sessions=setup.pretrain_sessions, latent=_latent(setup),
                      seed=0)


def _pretrain(out: Path, setup: ClaimSetup, group: str) -> None:
    from calibration.build import load_trial_dataset, pretrain
    from calibration.trainer import TrainConfig

    subjects = [load_trial_dataset(out / group, s.name, out / "cache").zscored() for s in _specs(setup, group)]
    pretrain(subjects, out / _shared(setup, group), TrainConfig(epochs=setup.pretrain_epochs, batch_size=setup.pretrain_batch,
                                                            max_lr=setup.pretrain_lr, checkpoint_s=1e9,
                                                            seed=setup.pretrain_seed))


def _calibrate(out: Path, setup: ClaimSetup, unit: dict) -> dict:
    """One arm on one new person's first ``runs`` runs: tuned on its validation split, then trained."""
    from calibration.build import calibrate, load_trial_dataset
    from calibration.splits import repeated_images
    from calibration.trainer import TrainConfig
    from calibration.tuning import Grid

    spec = _specs(setup, "new")[unit["seed"]]
    data = load_trial_dataset(out / "new", spec.name, out / "cache")
    held = repeated_images(data)  # the whole hour's repeated images, whatever part of it is trained on
    total = int(data.runs.max())
    if unit["runs"] < total:
        data = data.subset(np.flatnonzero((data.runs <= unit["runs"]) | np.isin(data.images, sorted(held))))
    scale = total / unit["runs"]
    grid = Grid(setup.lrs, tuple(max(1, round(e * scale)) for e in setup.epochs))
    pretrained = None if unit["arm"] == "scratch" else out / _shared(setup, "real" if unit["arm"] == "pretrained" else "scrambled")
    calibrate(data, out / "models" / unit["name"], TrainConfig(batch_size=24, checkpoint_s=1e9, seed=unit["seed"]),
              pretrained=pretrained, holdout=held, tune=grid)
    return _row(out, setup, unit)


def _row(out: Path, setup: ClaimSetup, unit: dict) -> dict:
    """A finished unit's row, read from its model folder's training.json."""
    spec = _specs(setup, "new")[unit["seed"]]
    summary = json.loads((out / "models" / unit["name"] / "training.json").read_text())
    return {**unit, "person": spec.name, "top1": both_ways(summary["evaluation"]),
            "held_out_images": summary["evaluation"]["held_out_images"], "chance": summary["evaluation"]["chance"],
            "overlap": summary["held_out_overlap"], "seen_person": summary["seen_person"],
            "images_in_pretraining": summary["calibration_images_in_pretraining"],
            "tuned": summary["tuning"]["best"],
            "validation": max(r["score"] for r in summary["tuning"]["grid"]), "seconds": summary["seconds"]}


def _task(out: str, setup: dict, kind: str, unit: dict):
    """What one worker process does; a marker file names the task while it runs."""
    out_path = Path(out)
    s = ClaimSetup(**{k: tuple(v) if isinstance(v, list) else v for k, v in setup.items()})
    marker = out_path / "running" / unit["name"]
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    start = time.monotonic()
    print(f"[claim] start {unit['name']}", flush=True)
    try:
        result = None
        if kind == "write" and not (out_path / unit["group"] / "dataset.json").exists():  # kept in a work folder
            _write(out_path, s, unit["group"])
        elif kind == "pretrain" and not (out_path / _shared(s, unit["group"]) / "model.safetensors").exists():
            _pretrain(out_path, s, unit["group"])
        elif kind == "unit" and (out_path / "models" / unit["name"] / "training.json").exists():
            result = _row(out_path, s, unit)  # finished in this work folder before (training.json comes last)
        elif kind == "unit":
            result = _calibrate(out_path, s, unit)
    finally:
        marker.unlink(missing_ok=True)
    extra = f": {100 * result['top1']:.0f} % (tuned {result['tuned']})" if result else ""
    print(f"[claim] done {unit['name']} in {time.monotonic() - start:.0f} s{extra}", flush=True)
    return result


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)  # two one-thread workers use 2 cores better than one two-thread one here


class ClaimTimeout(RuntimeError):
    """The claim passed its deadline; the message names every unit still running."""


def _plan(setup: ClaimSetup) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(kind, unit, what it waits for), in the order they are handed out: the long pretraining first."""
    groups = [g for g, arm in (("real", "pretrained"), ("scrambled", "scrambled")) if arm in setup.arms] + ["new"]
    tasks = [("write", {"name": f"write-{g}", "group": g}, ()) for g in groups]
    for group, arm in (("real", "pretrained"), ("scrambled", "scrambled")):
        if arm in setup.arms:
            tasks.append(("pretrain", {"name": f"pretrain-{group}", "group": group}, (f"write-{group}",)))
    for arm in sorted(setup.arms, key=lambda a: a != "scratch"):  # scratch first: it needs no pretraining
        need = ("write-new",) + (() if arm == "scratch" else
                                 (f"pretrain-{'real' if arm == 'pretrained' else 'scrambled'}",))
        for runs in setup.runs:
            for seed, spec in enumerate(_specs(setup, "new")):
                tag = f"-p{setup.pretrain_seed}" if setup.pretrain_seed and arm != "scratch" else ""
                tasks.append(("unit", {"name": f"{arm}-seed{seed}-{spec.name}-runs{runs}{tag}", "arm": arm, "seed": seed,
                                       "runs": runs}, need))
    return tasks


def measure(out: str | Path, setup: ClaimSetup = ClaimSetup(), log=print) -> list[dict]:
    """Every unit's row (person, seed, arm, runs, held-out 50-way top-1 both ways, tuned settings, ...)."""
    import multiprocessing

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "running").glob("*"):
        stale.unlink()
    start = time.monotonic()
    todo, done, rows, running = _plan(setup), set(), [], {}
    with multiprocessing.get_context("spawn").Pool(setup.workers, initializer=_one_thread) as pool:
        while todo or running:
            for task in [t for t in todo if set(t[2]) <= done]:
                todo.remove(task)
                running[task[1]["name"]] = pool.apply_async(_task, (str(out), asdict(setup), task[0], task[1]))
            for name, result in list(running.items()):
                if result.ready():
                    row = result.get()  # a worker's exception is raised here, naming its task in the log
                    del running[name]
                    done.add(name)
                    if row is not None:
                        rows.append(row)
            if setup.deadline_s and time.monotonic() - start > setup.deadline_s:
                names = sorted(p.name for p in (out / "running").glob("*"))
                pool.terminate()
                raise ClaimTimeout(f"the claim passed its {setup.deadline_s:.0f} s deadline; still running: "
                                   f"{', '.join(names) or 'none'}; not started: {len(todo)} task(s)")
            time.sleep(0.5)
    log(f"[claim] all done in {time.monotonic() - start:.0f} s")
    return sorted(rows, key=lambda r: (r["runs"], ARMS.index(r["arm"]), r["seed"]))


def paired(rows: list[dict], a: str, b: str, runs: int) -> dict | None:
    """Arm ``a`` minus arm ``b`` over the same people: mean, sd, 95 % interval, paired t-test, wins."""
    from scipy import stats

    x = {r["seed"]: r["top1"] for r in rows if r["arm"] == a and r["runs"] == runs}
    y = {r["seed"]: r["top1"] for r in rows if r["arm"] == b and r["runs"] == runs}
    seeds = sorted(set(x) & set(y))
    if len(seeds) < 2:
        return None
    d = np.array([x[s] - y[s] for s in seeds])
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(d) - 1) * sd / np.sqrt(len(d)))
    p = float(stats.ttest_rel([x[s] for s in seeds], [y[s] for s in seeds]).pvalue) if sd > 0 else float("nan")
    return {"a": a, "b": b, "runs": runs, "n": len(d), "mean": float(d.mean()), "sd": sd,
            "ci95": (float(d.mean()) - half, float(d.mean()) + half), "p": p, "wins": int((d > 0).sum())}


def table(rows: list[dict]) -> str:
    """Per number of calibration runs: each arm's per-person figures, then the paired differences."""
    lines = []
    for runs in sorted({r["runs"] for r in rows}):
        lines.append(f"calibration runs: {runs} (held-out 50-way top-1, both ways; person = seed 0, 1, ...)")
        for arm in ARMS:
            mine = [r for r in rows if r["arm"] == arm and r["runs"] == runs]
            if mine:
                v = np.array([r["top1"] for r in mine])
                tuned = ", ".join(f"{r['tuned']['max_lr']:g}/{r['tuned']['epochs']}" for r in mine)
                lines.append(f"  {arm:<11} {' / '.join(f'{100 * x:.0f}' for x in v)} %; mean {100 * v.mean():.1f} "
                             f"(sd {100 * v.std(ddof=1) if len(v) > 1 else 0:.1f}); tuned lr/epochs {tuned}")
        for a, b in PAIRS:
            s = paired(rows, a, b, runs)
            if s:
                lines.append(f"  {a} - {b}: mean {100 * s['mean']:+.1f} points (sd {100 * s['sd']:.1f}, 95 % CI "
                             f"{100 * s['ci95'][0]:+.1f} to {100 * s['ci95'][1]:+.1f}), paired t p = {s['p']:.3f}, "
                             f"ahead for {s['wins']} of {s['n']} people")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtdecode.tools.claim", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a work folder (datasets and models are kept)")
    for f in fields(ClaimSetup):
        value = getattr(ClaimSetup(), f.name)
        if isinstance(value, tuple):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value[0]), nargs="+", default=value)
        elif isinstance(value, bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    setup = ClaimSetup(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                          for f in fields(ClaimSetup)})
    rows = measure(args.out, setup)
    (args.out / "claim.json").write_text(json.dumps({"setup": asdict(setup), "rows": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
