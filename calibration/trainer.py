"""The MindEye2 recipe as one trainer: multi-subject pretraining and single-subject fine-tuning alike.

loss = prior_scale * prior MSE + contrastive(clip_voxels, targets) [+ blur_scale * blurry loss, off here]
contrastive = BiMixCo (temperature .006, voxels mixed within each subject) for the first ``mixup_pct``
of the steps, then SoftCLIP with a temperature annealed .004 -> .0075. AdamW (weight decay 1e-2),
OneCycleLR per step. A checkpoint (model, optimiser, schedule, step, RNG) is written every
``checkpoint_s`` seconds and at the end; ``resume=True`` continues from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.data import SubjectData
from calibration.losses import flat_unit, mixco, mixco_nce, soft_clip_loss, soft_temperatures
from models.mindeye2.model import MindEye2

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 24
    max_lr: float = 3e-4
    weight_decay: float = 1e-2
    mixup_pct: float = 0.33
    prior_scale: float = 30.0
    clip_scale: float = 1.0
    seed: int = 0
    checkpoint_s: float = 300.0

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(sizes: list[int], batch: int, rng: np.random.Generator) -> list[list[tuple[int, np.ndarray]]]:
    """Per step: (subject index, rows) for each subject, batch // n_subjects rows each (as published)."""
    per = max(batch // len(sizes), 1)
    orders = [rng.permutation(n) for n in sizes]
    steps = min(n // per for n in sizes)
    return [[(s, orders[s][i * per:(i + 1) * per]) for s in range(len(sizes))] for i in range(steps)]


def train(model: MindEye2, subjects: list[SubjectData], config: TrainConfig, out: str | Path | None = None,
          resume: bool = False, progress=None) -> dict:
    """Train ``model`` on ``subjects`` (each must have a ridge of its name). Returns the loss history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    index = [model.config.subject_index(s.subject) for s in subjects]
    sizes = [len(s.betas) for s in subjects]
    steps_per_epoch = len(_batches(sizes, config.batch_size, np.random.default_rng(0)))
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than a subject's training set ({min(sizes)} trials)")
    total = steps_per_epoch * config.epochs
    mix_steps = int(total * config.mixup_pct)
    temps = soft_temperatures(total - mix_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.max_lr, total_steps=total,
                                                pct_start=min(2 / config.epochs, 0.5), final_div_factor=1000)
    history: dict[str, list[float]] = {"loss": [], "clip": [], "prior": []}
    step, epoch0 = 0, 0
    ckpt = Path(out) / "checkpoint.pt" if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch0 = int(state["step"]), int(state["epoch"])
        history = {k: list(v) for k, v in state["history"].items()}
        torch.set_rng_state(state["torch_rng"])
        rng = np.random.default_rng(int(state["numpy_seed"]))
        log.info("resumed at step %d of %d (epoch %d)", step, total, epoch0)
    tensors = [(torch.from_numpy(s.betas), torch.from_numpy(s.tokens.astype(np.float32))) for s in subjects]
    last_save = time.monotonic()
    model.train()
    for epoch in range(epoch0, config.epochs):
        epoch_seed = int(rng.integers(2**31))
        plan = _batches(sizes, config.batch_size, np.random.default_rng(epoch_seed))
        for batch in plan[max(step - epoch * steps_per_epoch, 0):]:  # a resumed epoch skips its done steps
            preds, targets, backbones, perms, lams, offset = [], [], [], [], [], 0
            for s, rows in batch:
                x, y = tensors[s][0][rows], tensors[s][1][rows]
                if step < mix_steps:
                    x, perm, lam = mixco(x)
                    perms.append(perm + offset)  # offsets keep each subject's permutation inside its block
                    lams.append(lam)
                backbone, clip, _ = model(x, index[s])
                preds.append(clip)
                backbones.append(backbone)
                targets.append(y)
                offset += len(rows)
            clip, target, backbone = torch.cat(preds), torch.cat(targets), torch.cat(backbones)
            p, t = flat_unit(clip), flat_unit(target)
            if step < mix_steps:
                loss_clip = mixco_nce(p, t, torch.cat(perms), torch.cat(lams))
            else:
                loss_clip = soft_clip_loss(p, t, float(temps[step - mix_steps]))
            loss_prior, _ = model.diffusion_prior.loss(target, backbone)
            loss = config.prior_scale * loss_prior + config.clip_scale * loss_clip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            history["loss"].append(loss.item())
            history["clip"].append(loss_clip.item())
            history["prior"].append(loss_prior.item())
            if progress is not None:
                progress(step, total, history["loss"][-1])
            if ckpt is not None and time.monotonic() - last_save >= config.checkpoint_s:
                _save(ckpt, model, opt, sched, step, epoch, history, rng)
                last_save = time.monotonic()
        epoch0 = epoch + 1
    if ckpt is not None:
        _save(ckpt, model, opt, sched, step, config.epochs, history, rng)
    model.eval()
    return {"steps": step, "total_steps": total, **history}


def _save(path: Path, model, opt, sched, step: int, epoch: int, history: dict, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "epoch": epoch, "history": history, "torch_rng": torch.get_rng_state(),
                "numpy_seed": int(rng.integers(2**31))}, tmp)
    tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact


@torch.no_grad()
def predict_tokens(model: MindEye2, data: SubjectData) -> np.ndarray:
    """Retrieval-head tokens for every trial (eval mode)."""
    model.eval()
    x = torch.from_numpy(data.betas)
    _, clip, _ = model(x, data.subject)
    return clip.numpy()
