"""MindEye2's claim measured on the simulator: pretrained on other people, then fine-tuned on one hour of
a new person, against a model trained from scratch on the same hour, on images no model saw.

``python -m rtdecode.claim --out WORK --seeds 0 1 2`` prints the table docs/calibration.md gives;
``tests/test_calibration_claim.py`` (``make claim``) asserts it. Each seed is a whole repetition: its
own pretraining run and its own fine-tuning and scratch runs.

Images are disjoint by construction (rtdecode/gallery/splits.py): pretraining people never see a
test-pool image (``role="pretrain"``); the new person's repeated, held-out images come from the test
pool (``role="new"``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ClaimSetup:
    """The comparison's scale. Pretraining sees 6 people x 4 sessions (24 times the new person's hour;
    MindEye2 pretrains on about 40 sessions per person), in 10 epochs of batch 192."""

    pretrain_people: int = 6
    pretrain_sessions: int = 4
    pretrain_epochs: int = 10
    pretrain_batch: int = 192
    pretrain_lr: float = 2e-3
    calibrate_epochs: int = 10
    calibrate_lr: float = 1e-3
    latent_dim: int = 32


def both_ways(evaluation: dict) -> float:
    return (evaluation["top1_brain_to_image"] + evaluation["top1_image_to_brain"]) / 2


def measure(out: str | Path, seeds: list[int], setup: ClaimSetup = ClaimSetup(), log=print) -> list[dict]:
    """One row per seed: held-out 50-way top-1 (mean of both directions) fine-tuned and from scratch,
    the held-out images' overlap with every training set, and the seconds taken."""
    from calibration.build import calibrate, load_trial_dataset, pretrain
    from calibration.trainer import TrainConfig
    from rtdecode.simulator.subjects import LatentSpace, SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    out = Path(out)
    latent = LatentSpace(dim=setup.latent_dim)
    people = [SubjectSpec(name=f"p{i}", n_voxels=600 + 37 * i, seed=i, latent_dim=setup.latent_dim)
              for i in range(setup.pretrain_people)]
    new = SubjectSpec(name="new", n_voxels=611, seed=50, latent_dim=setup.latent_dim)
    if not (out / "others" / "dataset.json").exists():
        write_dataset(out / "others", people, sessions=setup.pretrain_sessions, latent=latent, seed=0)
    if not (out / "new" / "dataset.json").exists():
        write_dataset(out / "new", [new], sessions=1, latent=latent, seed=1, role="new")
    cache = out / "cache"
    subjects = [load_trial_dataset(out / "others", s.name, cache).zscored() for s in people]
    data = load_trial_dataset(out / "new", "new", cache)
    rows = []
    for seed in seeds:
        start = time.monotonic()
        shared = out / f"shared-{seed}"
        if not (shared / "model.safetensors").exists():
            pretrain(subjects, shared, TrainConfig(epochs=setup.pretrain_epochs, batch_size=setup.pretrain_batch,
                                                   max_lr=setup.pretrain_lr, checkpoint_s=1e9, seed=seed))
        model = calibrate(data, out / f"new-{seed}", TrainConfig(epochs=setup.calibrate_epochs, batch_size=24,
                                                                  max_lr=setup.calibrate_lr, checkpoint_s=1e9, seed=seed),
                          pretrained=shared, compare_scratch=True)
        summary = json.loads((model / "training.json").read_text())
        row = {"seed": seed, "pretrained": both_ways(summary["evaluation"]), "scratch": both_ways(summary["scratch"]),
               "held_out_images": summary["evaluation"]["held_out_images"], "chance": summary["evaluation"]["chance"],
               "overlap": summary["held_out_overlap"], "model": str(model), "seconds": round(time.monotonic() - start)}
        rows.append(row)
        log(f"seed {seed}: pretrained then fine-tuned {100 * row['pretrained']:.0f} %, from scratch "
            f"{100 * row['scratch']:.0f} % ({row['seconds']} s)")
    return rows


def table(rows: list[dict]) -> str:
    a = np.array([r["pretrained"] for r in rows])
    b = np.array([r["scratch"] for r in rows])
    return (f"pretrained then fine-tuned: {' / '.join(f'{100 * v:.0f}' for v in a)} %; mean {100 * a.mean():.1f} %\n"
            f"from scratch:               {' / '.join(f'{100 * v:.0f}' for v in b)} %; mean {100 * b.mean():.1f} %\n"
            f"difference: mean {100 * (a - b).mean():.1f} points, smallest {100 * (a - b).min():.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtdecode.claim", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a work folder (datasets and models are kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for name, value in asdict(ClaimSetup()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    setup = ClaimSetup(**{k: getattr(args, k) for k in asdict(ClaimSetup())})
    print(table(measure(args.out, args.seeds, setup)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
