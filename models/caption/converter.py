"""MindEye2's bigG -> CLIP-L converter: OpenCLIP bigG image tokens (256 x 1664) to the 257 x 1024 CLIP
ViT-L/14 tokens GIT's text decoder was trained on.

The published ``bigG_to_L_epoch8.pth`` is a pickled dict ``{'model_state_dict': {...}}`` of MindEye2's
``CLIPConverter``: ``linear1`` (256 -> 257) mixes tokens, then ``linear2`` (1664 -> 1024) mixes
channels. It is read through ``models.legacy_pickle`` (no code runs), renamed by
:func:`convert_bigg_to_l`, and kept as ``bigG_to_L.safetensors`` + ``bigG_to_L.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.jsonconfig import JsonConfig
from models.legacy_pickle import load_checkpoint

PUBLISHED_KEYS = {"linear1.weight": "tokens.weight", "linear1.bias": "tokens.bias",
                  "linear2.weight": "channels.weight", "linear2.bias": "channels.bias"}
PREFIXES = ("module.", "_orig_mod.", "model.")
WEIGHTS, CONFIG = "bigG_to_L.safetensors", "bigG_to_L.json"


@dataclass(frozen=True)
class ConverterConfig(JsonConfig):
    """Sizes of the converter; the published file's by default."""

    tokens_in: int = 256
    tokens_out: int = 257
    dim_in: int = 1664
    dim_out: int = 1024


class BigGToL(nn.Module):
    """(N, tokens_in, dim_in) -> (N, tokens_out, dim_out): a linear map over tokens, then over channels."""

    def __init__(self, config: ConverterConfig | None = None) -> None:
        super().__init__()
        self.config = config or ConverterConfig()
        self.tokens = nn.Linear(self.config.tokens_in, self.config.tokens_out)
        self.channels = nn.Linear(self.config.dim_in, self.config.dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channels(self.tokens(x.transpose(1, 2)).transpose(1, 2))


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two devices are one: ``cuda`` names the current CUDA device, which ``cuda:0`` may also name."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None):
        current = torch.cuda.current_device()
        return (current if a.index is None else a.index) == (current if b.index is None else b.index)
    return a.index == b.index


def convert_bigg_to_l(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published ``CLIPConverter`` keys (``linear1.*``, ``linear2.*``) -> :class:`BigGToL`'s keys.

    Wrappers' prefixes (``module.``, ...) go; any other key, or a missing one, is an error naming it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        bare = key
        for prefix in PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        if bare not in PUBLISHED_KEYS:
            raise ValueError(f"bigG_to_L state dict: unexpected key {key!r}; expected {sorted(PUBLISHED_KEYS)}")
        out[PUBLISHED_KEYS[bare]] = value
    missing = sorted(k for k, v in PUBLISHED_KEYS.items() if v not in out)
    if missing:
        raise ValueError(f"bigG_to_L state dict: missing key(s) {missing}")
    return out


def config_from_state_dict(state: dict[str, torch.Tensor]) -> ConverterConfig:
    """Sizes read off the converted tensors, checked against each other."""
    missing = sorted(set(PUBLISHED_KEYS.values()) - set(state))
    if missing:
        raise ValueError(f"bigG_to_L: missing tensor(s) {missing}")
    tw, cw = state["tokens.weight"], state["channels.weight"]
    if tw.ndim != 2 or cw.ndim != 2:
        raise ValueError(f"bigG_to_L: weights must be 2-D, got {tuple(tw.shape)} and {tuple(cw.shape)}")
    config = ConverterConfig(tokens_in=int(tw.shape[1]), tokens_out=int(tw.shape[0]),
                             dim_in=int(cw.shape[1]), dim_out=int(cw.shape[0]))
    for key, want in (("tokens.bias", config.tokens_out), ("channels.bias", config.dim_out)):
        if tuple(state[key].shape) != (want,):
            raise ValueError(f"bigG_to_L: {key} has shape {tuple(state[key].shape)}, expected ({want},)")
    return config


def _module(state: dict[str, torch.Tensor], config: ConverterConfig) -> BigGToL:
    with torch.device("meta"):
        module = BigGToL(config)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_published_converter(path: str | Path) -> BigGToL:
    """MindEye2's published ``bigG_to_L_epoch8.pth``, read without running anything in it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bigG_to_L converter not found (rtdecode models download bigG-to-L)")
    ckpt = load_checkpoint(path, ("model_state_dict",))
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: expected a dict with 'model_state_dict', got {type(ckpt).__name__}")
    try:
        state = convert_bigg_to_l(ckpt["model_state_dict"])
        return _module(state, config_from_state_dict(state))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_converter(module: BigGToL, folder: str | Path) -> Path:
    """``bigG_to_L.safetensors`` + ``bigG_to_L.json`` in ``folder`` (beside GIT in a captioner folder)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "model": "bigG_to_L"})
    module.config.to_json(folder / CONFIG)
    return folder


def load_converter(folder: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> BigGToL:
    """A converter written by :func:`save_converter`, loaded strictly, or the published ``.pth`` at
    ``folder/bigG_to_L_epoch8.pth`` when only that is there."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() and (folder / "bigG_to_L_epoch8.pth").is_file():
        module = load_published_converter(folder / "bigG_to_L_epoch8.pth")
    else:
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: {name} is missing; expected {WEIGHTS} + {CONFIG} "
                                        "(models.caption.save_converter) or bigG_to_L_epoch8.pth")
        config = ConverterConfig.from_json(folder / CONFIG)
        state = load_file(str(folder / WEIGHTS))
        if config_from_state_dict(state) != config:
            raise ValueError(f"{folder / WEIGHTS}: tensor sizes {config_from_state_dict(state)} differ from "
                             f"{folder / CONFIG}: {config}")
        module = _module(state, config)
    return module.to(device=device, dtype=dtype)
