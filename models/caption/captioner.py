"""Captions from brain tokens, as MindEye2 makes them: the prior's bigG tokens -> CLIP-L tokens (the
bigG_to_L converter) -> GIT-large-COCO's text decoder, greedy, at most 20 tokens.

MindEye2 (``modeling_git.GitForCausalLMClipEmb``) feeds the converted 257 x 1024 tokens where GIT's vision
encoder's output would be (the encoder's last hidden state, after its final LayerNorm) and keeps GIT's
visual projection (Linear + LayerNorm) and everything after it. Here transformers' own ``GitForCausalLM``
runs unchanged with its vision encoder swapped for :class:`GivenVisualFeatures`, which hands the given
tokens on; the encoder's weights are checked and then not kept.

A captioner folder is GIT in the published Hugging Face layout (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, the tokenizer's files) plus the converter (``bigG_to_L.safetensors`` +
``bigG_to_L.json``, or the published ``bigG_to_L_epoch8.pth``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from models.caption.converter import BigGToL, load_converter, same_device
from models.legacy_pickle import load_checkpoint

MAX_LENGTH = 20  # MindEye2: generate(pixel_values=..., max_length=20); the start token counts
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VISION = "git.image_encoder."


class GivenVisualFeatures(nn.Module):
    """Stands where GIT's vision encoder stands and returns the features it is given.

    GIT's forward only takes 4-D or 5-D ``pixel_values``; features (N, T, D) are passed as (N, 1, T, D).
    """

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=pixel_values[:, 0])


def _read_weights(folder: Path, device: str | torch.device):
    """(path, {key: shape}, fetch) for the first of ``WEIGHT_FILES`` present; ``fetch(keys)`` reads only
    those tensors (safetensors straight onto ``device``), so the vision encoder's weights are checked by
    shape and never read. A pickled ``pytorch_model.bin`` goes through the project's safe reader
    (``torch.load(weights_only=True)``, memory-mapped; nothing in it runs)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

            def fetch(keys: list[str], path: Path = path) -> dict[str, torch.Tensor]:
                where = "cpu" if torch.device(device).type == "meta" else str(device)  # meta holds no data
                with safe_open(str(path), framework="pt", device=where) as f:
                    return {k: f.get_tensor(k) for k in keys}

            return path, shapes, fetch
        state = load_checkpoint(path)
        bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))] \
            if isinstance(state, dict) else ["<top>"]
        if bad:
            raise ValueError(f"{path}: expected a state dict of tensors under text keys; found {bad[:3]}")
        return path, {k: tuple(v.shape) for k, v in state.items()}, lambda keys, s=state: {k: s[k] for k in keys}
    raise FileNotFoundError(f"{folder}: no GIT weights; expected one of {', '.join(WEIGHT_FILES)}")


def load_git(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """GIT from a Hugging Face layout folder, loaded strictly, its vision encoder replaced by
    :class:`GivenVisualFeatures`. Returns (model, tokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig, GitConfig, GitForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: config.json is missing; expected GIT in the Hugging Face layout")
    config = GitConfig.from_json_file(str(folder / "config.json"))
    if config.model_type != "git":
        raise ValueError(f"{folder / 'config.json'}: model_type must be 'git', got {config.model_type!r}")
    with torch.device("meta"):
        model = GitForCausalLM(config)
    path, shapes, fetch = _read_weights(folder, device)
    _check_keys(model, shapes, path)
    kept = fetch([k for k in shapes if k in model.state_dict() and not k.startswith(VISION)])
    model.git.image_encoder = GivenVisualFeatures()
    if config.tie_word_embeddings and "output.weight" not in kept:
        kept["output.weight"] = kept["git.embeddings.word_embeddings.weight"]
    model.load_state_dict(kept, strict=True, assign=True)
    for name, buffer in list(model.named_buffers()):  # index buffers are not saved: rebuilt here
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            if leaf != "position_ids":
                raise ValueError(f"{path}: GIT buffer {name} is not stored and cannot be rebuilt")
            model.get_submodule(owner).register_buffer(
                leaf, torch.arange(buffer.shape[-1], device=device).expand(buffer.shape).clone(), persistent=False)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), tokenizer


def _check_keys(model: nn.Module, state: dict[str, tuple[int, ...]], path: Path) -> None:
    """Strict: every weight the model has is in the file, with its shape, and nothing else is, except the
    index buffers (``position_ids``) older transformers saved."""
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    tied = "output.weight" if getattr(model.config, "tie_word_embeddings", False) else None
    missing = sorted(k for k in expected if k not in state and k != tied)
    unexpected = sorted(k for k in state if k not in expected and k not in buffers)
    if missing or unexpected:
        raise ValueError(f"{path}: not GIT of {path.parent / 'config.json'}: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    for key, value in expected.items():
        if key in state and state[key] != tuple(value.shape):
            raise ValueError(f"{path}: {key} has shape {state[key]}, the config says "
                             f"{tuple(value.shape)}")


class BrainCaptioner:
    """bigG brain tokens (N, 256, 1664) -> captions, on one device and dtype."""

    def __init__(self, git: nn.Module, tokenizer, converter: BigGToL, max_length: int = MAX_LENGTH) -> None:
        self.git, self.tokenizer, self.converter, self.max_length = git, tokenizer, converter, max_length
        vision = git.config.vision_config
        self.image_tokens = int((vision.image_size // vision.patch_size) ** 2 + 1)
        c = converter.config
        if (c.tokens_out, c.dim_out) != (self.image_tokens, vision.hidden_size):
            raise ValueError(f"bigG_to_L gives {c.tokens_out} x {c.dim_out} tokens but GIT's vision encoder "
                             f"gives {self.image_tokens} x {vision.hidden_size}")

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    converter: str | Path | None = None) -> BrainCaptioner:
        """GIT (Hugging Face layout) and the converter from ``path`` (or the converter from ``converter``)."""
        git, tokenizer = load_git(path, device=device, dtype=dtype)
        conv = load_converter(converter or path, device=device, dtype=dtype)
        return cls(git, tokenizer, conv)

    @property
    def device(self) -> torch.device:
        return self.converter.tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.converter.tokens.weight.dtype

    @torch.no_grad()
    def to_clip_l(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 256, 1664) bigG tokens -> (N, 257, 1024) CLIP-L tokens."""
        c = self.converter.config
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (c.tokens_in, c.dim_in):
            raise ValueError(f"captioner: tokens must be (N, {c.tokens_in}, {c.dim_in}), got {tuple(tokens.shape)}")
        if not same_device(tokens.device, self.device):
            raise ValueError(f"captioner: tokens are on {tokens.device}, the captioner on {self.device}")
        return self.converter(tokens.to(self.dtype))

    @torch.no_grad()
    def generate_ids(self, clip_l: torch.Tensor) -> torch.Tensor:
        """Greedy token ids from CLIP-L tokens given in place of GIT's vision encoder output."""
        return self.git.generate(pixel_values=clip_l.to(self.dtype)[:, None], max_length=self.max_length,
                                 do_sample=False, num_beams=1)

    def caption(self, tokens: torch.Tensor) -> list[str]:
        """One caption per sample of (N, 256, 1664) bigG tokens on the captioner's device."""
        ids = self.generate_ids(self.to_clip_l(tokens))
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
