"""The model folder the decoder loads and calibration writes.

``model.safetensors`` + ``config.json`` (MindEye2), ``subject.json`` (whose ridge decodes),
``embedder.json`` (the token space the model was trained in: the stand-in or OpenCLIP), and
optionally the subject's z-score statistics and a ``training.json`` summary written by calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.mindeye2.checkpoint import load_pretrained, save_pretrained
from models.mindeye2.model import MindEye2
from models.standin import StandInConfig, StandInEmbedder


def standin_spec(config: StandInConfig | None = None) -> dict:
    return {"kind": "standin", "config": (config or StandInConfig()).to_dict()}


def write_model_folder(model: MindEye2, folder: str | Path, subject: str, embedder: dict | None = None) -> Path:
    """Weights, config, subject and token space (default: the stand-in)."""
    folder = save_pretrained(model, folder)
    (folder / "embedder.json").write_text(json.dumps(embedder or standin_spec()))
    (folder / "subject.json").write_text(json.dumps({"subject": subject}))
    return folder


def read_model_folder(folder: str | Path, device: str = "cpu", dtype=None):
    """(model, subject, embedder) of a model folder."""
    folder = Path(folder)
    model = load_pretrained(folder, device=device, dtype=dtype)
    subject = json.loads((folder / "subject.json").read_text())["subject"]
    return model, subject, load_embedder(folder)


def load_embedder(folder: str | Path):
    """The token space the model was trained in, from ``embedder.json``."""
    path = Path(folder) / "embedder.json"
    spec = json.loads(path.read_text())
    if spec["kind"] == "standin":
        return StandInEmbedder(StandInConfig(**spec["config"]))
    if spec["kind"] == "openclip":
        from models.clip import ClipTokenEmbedder

        return ClipTokenEmbedder(spec["model"], spec["pretrained"], config_path=spec.get("config_path"))
    raise ValueError(f"{path}: kind must be 'standin' or 'openclip', got {spec['kind']!r}")
