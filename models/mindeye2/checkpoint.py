"""Loading the published MindEye2 checkpoints, converting them to safetensors, and loading those.

Published files (``train_logs/<name>/last.pth``) are pickled dicts holding ``model_state_dict`` with
keys ``ridge.*``, ``backbone.*``, ``diffusion_prior.*``. They are read with
``torch.load(weights_only=True)`` (no code runs); a file it refuses because of a stored object (a
torch < 2.4 scheduler state) is read by ``models.legacy_pickle`` without running anything. Sizes are
read off the tensors, and they load strictly. Converted folders hold ``model.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from models.legacy_pickle import load_checkpoint
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2

NSD_SUBJECTS = [f"subj0{i}" for i in range(1, 9)]
# Wrappers some training set-ups add in front of every key (DDP, accelerate, a parent module).
PREFIXES = ("module.", "_orig_mod.", "model.")


def published_subjects(name: str, n_ridges: int) -> list[str]:
    """Subject ids of a published file's ridges, from its name.

    Multi-subject files (``final_multisubject_subj01``) hold one ridge per NSD subject except the
    named held-out one, in sorted order; single-subject files (``final_subj01_pretrained_1sess_24bs``)
    hold that subject's.
    """
    held = re.search(r"subj0(\d)", name)
    if "multisubject" in name:
        subjects = [s for s in NSD_SUBJECTS if not held or s != f"subj0{held.group(1)}"]
    else:
        subjects = [f"subj0{held.group(1)}"] if held else [f"subject{i}" for i in range(n_ridges)]
    if len(subjects) != n_ridges:
        subjects = [f"subject{i}" for i in range(n_ridges)]
    return subjects


def convert_published_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published keys -> this package's keys. The layouts are the same by design; wrappers' prefixes go."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def config_from_state_dict(state: dict[str, torch.Tensor], subjects: list[str] | None = None) -> MindEye2Config:
    """Read every size off the tensors (meta tensors do: nothing is materialised)."""
    try:
        ridges = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"ridge\.linears\.(\d+)\.weight", k)))
        voxels = [int(state[f"ridge.linears.{i}.weight"].shape[1]) for i in ridges]
        hidden = int(state["ridge.linears.0.weight"].shape[0])
        clip_dim = int(state["backbone.clip_proj.0.weight"].shape[0])
        tokens = int(state["backbone.backbone_linear.weight"].shape[0]) // clip_dim
        seq_len = int(state["backbone.backbone_linear.weight"].shape[1]) // hidden
        n_blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("backbone.mixer_blocks1."))
        depth = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("diffusion_prior.net.causal_transformer.layers."))
        dim_head = int(state["diffusion_prior.net.causal_transformer.layers.0.0.null_kv"].shape[1])
        timesteps = int(state["diffusion_prior.noise_scheduler.betas"].shape[0])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a MindEye2 state dict: missing or malformed {exc}") from None
    blurry = "backbone.blin1.weight" in state
    channels = (32, 64, 128)
    if blurry:
        channels = tuple(int(state[f"backbone.bupsampler.up_blocks.{2 - i}.resnets.0.conv1.weight"].shape[0])
                         for i in range(3))
    return MindEye2Config(subjects=subjects or [f"subject{i}" for i in range(len(voxels))], voxels=voxels,
                          hidden=hidden, n_blocks=n_blocks, seq_len=seq_len, clip_tokens=tokens, clip_dim=clip_dim,
                          blurry=blurry, blurry_channels=channels, prior_depth=depth, prior_dim_head=dim_head,
                          prior_timesteps=timesteps)


def model_from_state_dict(state: dict[str, torch.Tensor], subjects: list[str] | None = None) -> MindEye2:
    """Build the model the state dict describes and load it strictly, without a second copy in memory."""
    state = convert_published_state_dict(state)
    config = config_from_state_dict(state, subjects)
    with torch.device("meta"):
        model = MindEye2(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_published(path: str | Path, subjects: list[str] | None = None) -> MindEye2:
    """A published ``last.pth``; subject ids come from the folder name unless given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MindEye2 checkpoint not found (rtdecode models download fetches it)")
    ckpt = load_checkpoint(path, ("model_state_dict",))  # weights_only; a refused file read without running it
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: expected a dict with 'model_state_dict', got {type(ckpt).__name__} "
                         f"with keys {sorted(ckpt)[:5] if isinstance(ckpt, dict) else '-'}")
    state = ckpt["model_state_dict"]
    n_ridges = sum(1 for k in state if re.fullmatch(r"(module\.)?ridge\.linears\.\d+\.weight", k))
    return model_from_state_dict(state, subjects or published_subjects(path.parent.name or path.stem, n_ridges))


def save_pretrained(model: MindEye2, folder: str | Path) -> Path:
    """``model.safetensors`` + ``config.json``; the format the decoder and calibration load."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().contiguous()
        # The rotary frequencies are one tensor shared by every layer (as published); safetensors
        # stores each key on its own, so repeats are written as copies.
        if value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        state[key] = value
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "model": "mindeye2"})
    model.config.to_json(folder / "config.json")
    return folder


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> MindEye2:
    """A folder written by :func:`save_pretrained`; ``dtype`` (e.g. torch.bfloat16) for GPU inference.

    The prior's schedule buffers stay float32 whatever ``dtype``: they index and scale the noise.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: {name} is missing; expected a folder written by save_pretrained")
    config = MindEye2Config.from_json(folder / "config.json")
    with torch.device("meta"):
        model = MindEye2(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)), strict=True, assign=True)
    if dtype is not None:
        schedule = model.diffusion_prior.noise_scheduler
        model.to(dtype)
        schedule.float()
    return model.eval()


def convert_to_safetensors(src: str | Path, dst: str | Path, subjects: list[str] | None = None) -> Path:
    """A published ``.pth`` -> a safetensors folder."""
    return save_pretrained(load_published(src, subjects), dst)
