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


def pretrained_key(settings: DemoSettings, latent_dim: int) -> str:
    recipe = {"subjects": settings.pretrain_subjects, "sessions": settings.pretrain_sessions,
              "runs": settings.pretrain_runs,
              "epochs": settings.pretrain_epochs, "hidden": settings.hidden, "latent_dim": latent_dim,
              "seed": settings.seed, "version": 4}
    # 2: no test-pool image; 3: one backbone pass per step; 4: no new-person-pool image (issue 35)
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
                  latent=latent, seed=settings.seed, role="pretrain")
    subjects = [load_trial_dataset(work / "dataset", s.name, cache / "embeddings").zscored() for s in specs]
    config = TrainConfig(epochs=settings.pretrain_epochs, batch_size=48, max_lr=1e-3, seed=settings.seed,
                         checkpoint_s=1e9, cpu=True)
    pretrain(subjects, work / "model", config, hidden=settings.hidden, progress=Progress("   pretraining"))
    shutil.rmtree(work / "model" / "checkpoints", ignore_errors=True)
    (work / "model").replace(folder)  # only a finished model is ever found in the cache
    shutil.rmtree(work, ignore_errors=True)
    return folder, True
