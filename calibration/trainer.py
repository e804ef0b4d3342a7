"""The MindEye2 recipe as one trainer: multi-subject pretraining and single-subject fine-tuning alike.

loss = prior_scale * prior MSE + contrastive(clip_voxels, targets) + blur_scale * L1(blurry latent, VAE latent)
contrastive = BiMixCo (temperature .006, voxels mixed within each subject) for the first ``mixup_pct``
of the steps, then SoftCLIP with a temperature annealed .004 -> .0075. The blurry term is on when the
model has the low-level branch and every subject has VAE targets; while voxels are mixed, the targets
are mixed with the same weights (the published code builds the mixed targets after taking the L1, so
never uses them). The published optional 0.1 x contrastive term on VICRegL ConvNeXt features is not
built. AdamW (weight decay 1e-2),
OneCycleLR per step. A checkpoint (model, optimiser, schedule, step, history and every process's random
states: Python, NumPy, torch CPU and CUDA; the batches and draws follow from (seed, epoch, step)) is
written every ``checkpoint_s`` seconds (the main process decides, every process follows) and at the end;
``resume=True`` continues from it, so a run killed anywhere and resumed repeats the uninterrupted one.

The same code runs on one CPU or GPU, or on several processes started by ``accelerate launch`` or
``torchrun`` (Accelerate underneath). Every process draws the same global batch and the same random
mixing and prior noise from (seed, step); each runs the network on its share of the rows, the
retrieval outputs are gathered (with their gradients) so the contrastive loss sees the whole batch,
and DDP averages the gradients. So several processes compute the single-process gradient, up to
floating-point summation order and dropout masks (see tests/test_calibration_distributed.py).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calibration.data import SubjectData
from calibration.losses import (
    flat_unit,
    mix_rows,
    mixco,
    mixco_nce,
    soft_clip_loss,
    soft_temperatures,
)
from models.devices import generator_on, to_device
from models.mindeye2.model import MindEye2
from rtdecode.base.crash import crash_point

log = logging.getLogger(__name__)
BLUR_SHAPE = (4, 28, 28)  # the backbone's low-level latent
DEVICE_TABLE_GB = 16.0  # training tables up to this size are held on the device (see device_tables)


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 24
    max_lr: float = 3e-4
    weight_decay: float = 1e-2
    mixup_pct: float = 0.33
    prior_scale: float = 30.0
    clip_scale: float = 1.0
    blur_scale: float = 0.5
    seed: int = 0
    checkpoint_s: float = 300.0
    precision: str = "no"  # Accelerate's mixed_precision: "no", "bf16" or "fp16" (autocast)
    cpu: bool = False  # train on the CPU even where a GPU is present
    fused_adam: bool = False  # one fused AdamW kernel instead of foreach (the same update)
    checkpoint_activations: bool = False  # recompute blocks in backward: batch 24 at full size in less memory
    # Losses are read back to the host every ``log_every`` steps (0: every step on a CPU, every 50 on a GPU,
    # where each read-back would make the host wait for the device); checkpoints are decided there too.
    log_every: int = 0

    @classmethod
    def fast(cls, cuda: bool, **changes) -> TrainConfig:
        """The GPU fast path: bf16 autocast, fused AdamW, activation checkpointing (docs/calibration.md).
        On a CPU only checkpointing applies: it leaves every number as it was."""
        return cls(**{"precision": "bf16" if cuda else "no", "fused_adam": cuda, "checkpoint_activations": True,
                      **changes})

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(sizes: list[int], batch: int, rng: np.random.Generator) -> list[list[tuple[int, np.ndarray]]]:
    """Per step: (subject index, rows) for each subject, batch // n_subjects rows each (as published)."""
    per = max(batch // len(sizes), 1)
    orders = [rng.permutation(n) for n in sizes]
    steps = min(n // per for n in sizes)
    return [[(s, orders[s][i * per:(i + 1) * per]) for s in range(len(sizes))] for i in range(steps)]


class _TrainStep(nn.Module):
    """One step's forward and losses in a module, so DistributedDataParallel sees every trained weight."""

    def __init__(self, model: MindEye2, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.prior_scale, self.clip_scale, self.blur_scale = config.prior_scale, config.clip_scale, config.blur_scale

    def forward(self, inputs, target_local, target_all, order, mixing, temp, draws, blur_target=None):
        # Each subject through its own ridge, then every row through the shared backbone at once, as
        # MindEye2's training loop does (one backbone pass per step, not one per subject: 1.4x faster pretraining here).
        ridged = [self.model.ridge(x[:, None, :] if x.ndim == 2 else x, index) for index, x in inputs]
        backbone, clip, (blur, _) = self.model.backbone(torch.cat(ridged))
        loss_prior, _ = self.model.diffusion_prior.loss(target_local, backbone, draws=draws)
        clip = _gather_rows(clip.float(), order)
        p, t = flat_unit(clip), flat_unit(target_all)
        loss_clip = mixco_nce(p, t, *mixing) if mixing is not None else soft_clip_loss(p, t, temp)
        loss = self.prior_scale * loss_prior + self.clip_scale * loss_clip
        loss_blur = torch.zeros((), device=loss.device)
        if blur_target is not None:
            loss_blur = F.l1_loss(blur.float(), blur_target)
            loss = loss + self.blur_scale * loss_blur
        return loss, loss_clip.detach(), loss_prior.detach(), loss_blur.detach()


def _gather_rows(local: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Every process's rows, in global batch order; gradients flow back to the process that made them."""
    if order is None:
        return local
    from torch.distributed.nn.functional import all_gather

    gathered = torch.cat(all_gather(local))
    return gathered[torch.argsort(order.to(local.device))]


def _share(batch: list[tuple[int, np.ndarray]], rank: int, world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which rows of each subject block this process runs, their places in the global batch, and the
    places of every process's rows in the order they are gathered."""
    per = len(batch[0][1])
    if per % world:
        raise ValueError(f"batch size per subject ({per}) must divide by the number of processes ({world})")
    starts = np.cumsum([0] + [len(rows) for _, rows in batch])[:-1]
    places = [np.concatenate([start + np.arange(r, per, world) for start in starts]) for r in range(world)]
    return np.arange(rank, per, world), places[rank], np.concatenate(places)


def _schedule(opt: torch.optim.Optimizer, config: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """MindEye2's one-cycle schedule (warm-up over two epochs, at most half the run). A run of two steps
    or fewer keeps the rate constant: torch's schedule would divide by a warm-up of length 0."""
    if total < 3:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    pct = min(2 / config.epochs, 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.max_lr, total_steps=total, pct_start=pct,
                                               final_div_factor=1000)


def train(model: MindEye2, subjects: list[SubjectData], config: TrainConfig, out: str | Path | None = None,
          resume: bool = False, progress=None) -> dict:
    """Train ``model`` on ``subjects`` (each must have a ridge of its name). Returns the loss history."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=config.cpu or not torch.cuda.is_available(), mixed_precision=config.precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed + rank)  # dropout only; everything else is drawn from (seed, step)
    index = [model.config.subject_index(s.subject) for s in subjects]
    use_blur = _blurry_on(model, subjects)
    sizes = [len(s.betas) for s in subjects]
    steps_per_epoch = len(_batches(sizes, config.batch_size, np.random.default_rng(0)))
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than a subject's training set ({min(sizes)} trials)")
    total = steps_per_epoch * config.epochs
    mix_steps = int(total * config.mixup_pct)
    temps = soft_temperatures(total - mix_steps).tolist()  # host numbers: reading one makes no device wait
    kernel = {"fused": True} if config.fused_adam else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay, **kernel)
    model.activation_checkpointing(config.checkpoint_activations)
    sched = _schedule(opt, config, total)
    history: dict[str, list[float]] = {"loss": [], "clip": [], "prior": [], "blurry": []}
    step, epoch0 = 0, 0
    ckpt = Path(out) / "checkpoint.pt" if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch0 = int(state["step"]), int(state["epoch"])
        history.update({k: list(v) for k, v in state["history"].items()})
        states = state["rng"]
        if len(states) != world:
            raise ValueError(f"{ckpt}: saved by {len(states)} process(es); resume with the same number, not {world}")
        set_rng_states(states[rank])  # dropout and any other draw continue as if never interrupted
        log.info("resumed at step %d of %d (epoch %d)", step, total, epoch0)
    runner, opt = accelerator.prepare(_TrainStep(model, config), opt)
    device = accelerator.device
    feed = StepFeeder(device_tables(subjects, use_blur, device), index, model.diffusion_prior, config.seed, mix_steps,
                      temps, rank, world, device)
    log_every = config.log_every or (1 if device.type == "cpu" else 50)
    pending: list[torch.Tensor] = []  # each step's (clip, prior, blurry) losses, still on the device
    last_save = time.monotonic()
    model.train()
    for epoch in range(epoch0, config.epochs):
        plan = _batches(sizes, config.batch_size, np.random.default_rng([config.seed, epoch]))
        for batch in plan[max(step - epoch * steps_per_epoch, 0):]:  # a resumed epoch skips its done steps
            inputs, target_local, target_all, order, mixing, temp, draws, blur = feed(batch, epoch, step)
            with accelerator.autocast():
                loss, loss_clip, loss_prior, loss_blur = runner(inputs, target_local, target_all, order, mixing, temp,
                                                                draws, blur)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            step += 1
            if world > 1:
                loss_prior = accelerator.reduce(loss_prior, "mean")
                loss_blur = accelerator.reduce(loss_blur, "mean")
            pending.append(torch.stack([loss_clip.float(), loss_prior.float(), loss_blur.float()]))
            if step % log_every == 0 or step == total:  # between these the host queues steps without waiting
                _flush(pending, history, config, step, total, progress if accelerator.is_main_process else None)
                if ckpt is not None and _due(time.monotonic() - last_save >= config.checkpoint_s, world):
                    _save(ckpt, model, opt, sched, step, epoch, history, accelerator)
                    last_save = time.monotonic()
            crash_point("train_step")  # the resume tests kill a process here (RTDECODE_CRASH_AT)
        epoch0 = epoch + 1
    _flush(pending, history, config, step, total, progress if accelerator.is_main_process else None)
    if ckpt is not None:
        _save(ckpt, model, opt, sched, step, config.epochs, history, accelerator)
    accelerator.wait_for_everyone()
    model.eval()
    return {"steps": step, "total_steps": total, "processes": world, **history}


def _flush(pending: list[torch.Tensor], history: dict, config: TrainConfig, step: int, total: int, progress) -> None:
    """The steps' losses read back in one transfer (the only host sync of the loop), into the history."""
    if not pending:
        return
    rows = torch.stack(pending).tolist()
    first = step - len(rows) + 1
    pending.clear()
    for i, (clip, prior, blurry) in enumerate(rows):
        history["clip"].append(clip)
        history["prior"].append(prior)
        history["blurry"].append(blurry)
        history["loss"].append(config.prior_scale * prior + config.clip_scale * clip + config.blur_scale * blurry)
        if progress is not None:
            progress(first + i, total, history["loss"][-1])


def device_tables(subjects: list[SubjectData], use_blur: bool, device: torch.device,
                  budget_gb: float = DEVICE_TABLE_GB) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Each subject's betas, target tokens and blurry targets as tensors: on ``device`` when they fit
    ``budget_gb`` together (one session's 750 trials at full size: 1.3 GB), so each step gathers its batch
    there; else on the host (pinned on a GPU machine: NSD pretraining's 27,750 trials take 47 GB)."""
    host = [(torch.from_numpy(s.betas), torch.from_numpy(s.tokens.astype(np.float32)),
             torch.from_numpy(s.blur.astype(np.float32)) if use_blur else None) for s in subjects]
    if device.type == "cpu":
        return host
    size = sum(t.numel() * t.element_size() for row in host for t in row if t is not None)
    if size > budget_gb * 1e9:
        log.info("training tables (%.1f GB) stay on the host, over the %.0f GB device budget", size / 1e9, budget_gb)
        return [tuple(t.pin_memory() if t is not None and device.type == "cuda" else t for t in row) for row in host]
    return [tuple(t.to(device) if t is not None else None for t in row) for row in host]  # once, at the start


@dataclass
class StepFeeder:
    """What one step feeds the network, gathered and drawn on the device from (seed, epoch, step): the same
    batches, mixing and prior noise in every process and after a resume. Only the index plan and MixCo's
    few numbers are made on the host (``project_calibrate`` times this on the meta device)."""

    tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    index: list[int]
    prior: nn.Module
    seed: int
    mix_steps: int
    temps: list[float]
    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    def __post_init__(self) -> None:
        self.device = self.device or next(self.prior.parameters()).device

    def _rows(self, table: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Rows of a table, gathered where it lives, on the device."""
        return to_device(table[to_device(torch.from_numpy(rows), table.device)], self.device)

    def __call__(self, batch: list[tuple[int, np.ndarray]], epoch: int, step: int) -> tuple:
        draw = np.random.default_rng([self.seed, epoch, step])
        mine, local, order = _share(batch, self.rank, self.world)
        mine_t = to_device(torch.from_numpy(mine), self.device)
        inputs, perms, lams, blurs, offset = [], [], [], [], 0
        mixing = step < self.mix_steps
        for s, rows in batch:
            x = self._rows(self.tables[s][0], rows)
            blur = self._rows(self.tables[s][2], rows) if self.tables[s][2] is not None else None
            if mixing:  # mix the whole subject block, then keep this process's rows
                x, perm, lam = mixco(x, draw)
                perms.append(perm + offset)  # offsets keep each subject's permutation inside its block
                lams.append(lam)
                if blur is not None:  # the target of a mixed input is the same mix of targets
                    blur = mix_rows(blur, perm, lam)
            inputs.append((self.index[s], x[mine_t]))
            if blur is not None:
                blurs.append(blur[mine_t])
            offset += len(rows)
        target_all = torch.cat([self._rows(self.tables[s][1], rows) for s, rows in batch])
        generator = generator_on(self.device, int(draw.integers(2**62)))
        draws = self.prior.draw(len(order), tuple(target_all.shape[1:]), generator, device=self.device)
        target_local = target_all
        if self.world > 1:
            local_t = to_device(torch.from_numpy(local), self.device)
            draws, target_local = draws[local_t], target_all[local_t]
        temp = float(self.temps[step - self.mix_steps]) if not mixing else 0.0
        return (inputs, target_local, target_all,
                to_device(torch.from_numpy(order), self.device) if self.world > 1 else None,
                (torch.cat(perms), torch.cat(lams)) if mixing else None, temp, draws,
                torch.cat(blurs) if blurs else None)


def _blurry_on(model: MindEye2, subjects: list[SubjectData]) -> bool:
    """Train the low-level branch only where the model has one and every subject has VAE targets."""
    have = [s.blur is not None for s in subjects]
    if model.config.blurry and all(have):
        for s in subjects:
            if s.blur.shape[1:] != BLUR_SHAPE:
                raise ValueError(f"{s.subject}: blurry targets are {s.blur.shape[1:]}, the model's branch makes "
                                 f"{BLUR_SHAPE} (VAE latents of 224 px images)")
        return True
    if model.config.blurry:
        log.warning("the model's blurry branch is not trained: no SD VAE targets (pass --sd-vae)")
    elif any(have):
        log.warning("SD VAE targets given, but the model has no blurry branch: they are not used")
    return False


def rng_states() -> dict:
    """Every random state this process's training may draw from (plain types: weights_only loads them)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    out = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _due(mine: bool, world: int) -> bool:
    """The main process's decision, for every process (their clocks differ; their checkpoints may not)."""
    if world == 1:
        return mine
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([mine])[0])


def _save(path: Path, model, opt, sched, step: int, epoch: int, history: dict, accelerator) -> None:
    """Every process's random states gathered; the main process writes one file, atomically."""
    states = [rng_states()]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        states = gather_object(states)
    if not accelerator.is_main_process:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "epoch": epoch, "history": history, "rng": states}, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())  # on disk before it replaces the previous checkpoint
    tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact


@torch.no_grad()
def _outputs(model: MindEye2, data: SubjectData):
    model.eval()
    return model(torch.from_numpy(data.betas).to(next(model.parameters()).device), data.subject)


def predict_tokens(model: MindEye2, data: SubjectData) -> np.ndarray:
    """Retrieval-head tokens for every trial (eval mode)."""
    return _outputs(model, data)[1].float().cpu().numpy()


def predict_blur(model: MindEye2, data: SubjectData) -> np.ndarray:
    """Blurry-branch latents (trials x 4 x 28 x 28) for every trial (eval mode)."""
    return _outputs(model, data)[2][0].float().cpu().numpy()
