"""The demo's shared model: a small MindEye2 pretrained on simulated subjects, built once and cached.

The subjects are trial-level simulations (``rtdecode simulate betas``) in the same latent space as the
demo's volume-level subject, with their own voxels and response maps. The same model can be built by
hand with ``rtdecode simulate betas`` and ``rtdecode pretrain`` (docs/calibration.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from rtdecode.demo.settings import DemoSettings


def calibration_images(settings: DemoSettings) -> int:
    """How many images the calibration hour shows once (NSD's share repeated three times, as Visit plans)."""
    trials = settings.calibration_runs * settings.trials
    return trials - 3 * round(50 * trials / 693)


def visits(settings: DemoSettings, spec, latent) -> tuple:
    """(calibration hour, real-time run) of the demo's person. The hour's once-shown images come from the
    new-person pool, which the shared model never sees (as a new NSD subject's images are new to a shared
    model); its repeated (held-out) images and the real-time run's come from the test pool."""
    from rtdecode.gallery.splits import test_pool
    from rtdecode.simulator.paradigm import Paradigm
    from rtdecode.simulator.trials import new_person_pool
    from rtdecode.simulator.visit import Visit

    s, n = settings, latent.stimuli.n
    paradigm = Paradigm(volumes=s.volumes, trials=s.trials)
    calib = Visit(spec, n_runs=s.calibration_runs, paradigm=paradigm, shape=s.shape, voxel_mm=s.voxel_mm,
                  seed=s.seed, latent=latent, unique_from=new_person_pool(n, calibration_images(s)),
                  repeated_from=test_pool(n))
    live = Visit(spec, n_runs=s.realtime_runs, n_repeated=0, paradigm=paradigm, shape=s.shape, voxel_mm=s.voxel_mm,
                 seed=s.seed + 1000, latent=latent, exclude=calib.shown, unique_from=test_pool(n))
    return calib, live


def pretrained_key(settings: DemoSettings, latent_dim: int) -> str:
    recipe = {"subjects": settings.pretrain_subjects, "sessions": settings.pretrain_sessions,
              "runs": settings.pretrain_runs,
              "epochs": settings.pretrain_epochs, "hidden": settings.hidden, "latent_dim": latent_dim,
              "seed": settings.seed, "version": 5, "new_images": calibration_images(settings)}
    # 2: no test-pool image; 3: one backbone pass per step; 4: no new-person-pool image (issue 35);
    # 5: the new-person pool holds the calibration hour's once-shown images (issue 35)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def shared_model(settings: DemoSettings, cache: Path, latent, log=print) -> tuple[Path, bool]:
    """(model folder, built now?): the cached folder when it exists, else simulate and pretrain it."""
    from calibration.build import load_trial_dataset, pretrain
    from calibration.progress import Progress
    from calibration.trainer import TrainConfig
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.trials import write_dataset

    folder = cache / f"demo-shared-{pretrained_key(settings, latent.dim)}"
    if (folder / "model.safetensors").exists():
        return folder, False
    work = cache / f".{folder.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    specs = [SubjectSpec(name=f"shared{i + 1:02d}", n_voxels=500 + 150 * i, seed=200 + i, latent_dim=latent.dim)
             for i in range(settings.pretrain_subjects)]
    log(f"   simulating {len(specs)} pretraining subjects x {settings.pretrain_sessions} session(s)")
    write_dataset(work / "dataset", specs, sessions=settings.pretrain_sessions, n_runs=settings.pretrain_runs,
                  latent=latent, seed=settings.seed, role="pretrain", new_images=calibration_images(settings))
    subjects = [load_trial_dataset(work / "dataset", s.name, cache / "embeddings").zscored() for s in specs]
    config = TrainConfig(epochs=settings.pretrain_epochs, batch_size=48, max_lr=1e-3, seed=settings.seed,
                         checkpoint_s=1e9, cpu=True)
    pretrain(subjects, work / "model", config, hidden=settings.hidden, progress=Progress("   pretraining"))
    shutil.rmtree(work / "model" / "checkpoints", ignore_errors=True)
    (work / "model").replace(folder)  # only a finished model is ever found in the cache
    shutil.rmtree(work, ignore_errors=True)
    return folder, True
