"""``rtdecode simulate run | betas | stimuli``."""

from __future__ import annotations

import argparse

import numpy as np

from rtdecode.base.errors import ConfigError
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.simulator.paradigm import Paradigm
from rtdecode.simulator.scanner import simulate_run, write_run
from rtdecode.simulator.subjects import dataset_people, visit_person


def simulate(args: argparse.Namespace) -> int:
    try:
        return _simulate(args)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"rtdecode simulate {args.what}: {exc}") from None


def _simulate(args: argparse.Namespace) -> int:
    if args.what == "stimuli":
        paths = StimulusSet(n=args.n).save(args.out)
        print(f"wrote {len(paths)} images to {args.out}")
        return 0
    if args.what == "betas":
        from rtdecode.simulator.subjects import LatentSpace
        from rtdecode.simulator.trials import write_dataset

        specs = dataset_people(args.subjects, args.role, args.seed, args.first_person, reliability=args.reliability)
        latent = LatentSpace(dim=specs[0].latent_dim, stimuli=StimulusSet(n=args.images))
        path = write_dataset(args.out, specs, sessions=args.sessions, n_runs=args.runs, trials_per_run=args.trials,
                             seed=args.seed, role=args.role, latent=latent)
        print(f"wrote betas of {len(specs)} subjects ({', '.join(s.name for s in specs)}) x {args.sessions} "
              f"session(s) to {path.parent}")
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    pattern = args.pattern or ("{run:03d}_{volume:06d}.nii" if args.format == "nifti" else "001_{run:06d}_{volume:06d}.dcm")
    from rtdecode.simulator.visit import Visit

    series = args.series if args.series is not None else args.run
    subject, _, session = str(args.participant).partition("/")
    seed = Visit.participant_seed(args.seed, args.subject_seed, subject, session)  # each participant's order and motion
    if args.rest:
        run = simulate_run(args.volumes, shape=args.shape, voxel_mm=args.voxel_mm, max_mm=args.max_mm,
                           max_deg=args.max_deg, seed=seed)
    else:
        # A new person by simulate betas' rule (sim51.. at seed 0), never a pretraining person unless asked.
        spec = visit_person(args.subject_seed, args.seed, args.first_person, n_voxels=args.voxels,
                            reliability=args.reliability)
        visit = Visit(spec, n_runs=args.runs, paradigm=Paradigm(tr_s=args.tr, volumes=args.volumes, trials=args.trials),
                      shape=args.shape, voxel_mm=args.voxel_mm, max_mm=args.max_mm, max_deg=args.max_deg, seed=seed)
        run = visit.run(args.run - 1)
        if args.truth is not None:
            run.save_truth(args.truth, f"series-{series:03d}")
        if args.stimuli is not None:
            visit.save_stimuli(args.stimuli)
        print(f"subject {spec.name}: {len(run.roi_index)} visual voxels on this grid, {len(run.events)} trials, "
              f"median reliability {np.median(run.reliability):.2f}")
    report = write_run(run, args.out, pattern=pattern, series=series, fmt=args.format, tr_s=args.tr,
                       speedup=args.speedup, truth_dir=args.truth, subject=subject, session=session)
    print(f"wrote {len(report.paths)} volumes to {args.out}; latest file {report.max_lag_s * 1000:.0f} ms behind the "
          f"TR schedule at worst")
    return 0
