"""The model folder the decoder loads and calibration writes.

``model.safetensors`` + ``config.json`` (MindEye2), ``subject.json`` (whose ridge decodes, and whose
brain: the participant's BIDS label, the voxel count and a fingerprint of the session's voxel set),
``embedder.json`` (the token space the model was trained in: the stand-in or OpenCLIP), and
optionally the subject's z-score statistics and a ``training.json`` summary written by calibration.

A folder written before the participant was recorded (``subject.json`` with ``subject`` only) names no
participant; the decoder takes it for any participant whose betas have its voxel count, with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.mindeye2.checkpoint import load_pretrained, save_pretrained
from models.mindeye2.model import MindEye2
from models.standin import StandInConfig, StandInEmbedder


def standin_spec(config: StandInConfig | None = None) -> dict:
    return {"kind": "standin", "config": (config or StandInConfig()).to_dict()}


@dataclass(frozen=True)
class ModelIdentity:
    """Whose brain a model folder decodes: ``subject`` names its ridge; ``participant`` the BIDS label
    of the person it was calibrated on (None: a folder that does not say); ``voxels`` the ridge's input
    size; ``voxel_space`` a fingerprint of the session's voxel set ("" where it was not recorded)."""

    subject: str
    participant: str | None
    voxels: int
    voxel_space: str = ""


def write_model_folder(model: MindEye2, folder: str | Path, subject: str, embedder: dict | None = None,
                       participant: str | None = None, voxel_space: str = "") -> Path:
    """Weights, config, identity (``subject.json``) and token space (default: the stand-in)."""
    folder = save_pretrained(model, folder)
    (folder / "embedder.json").write_text(json.dumps(embedder or standin_spec()))
    voxels = model.config.voxels[model.config.subjects.index(subject)] if subject in model.config.subjects else None
    identity = {"subject": subject, "participant": participant, "voxels": voxels, "voxel_space": voxel_space}
    (folder / "subject.json").write_text(json.dumps(identity))
    return folder


def model_identity(folder: str | Path, model: MindEye2) -> ModelIdentity:
    """The identity a folder records; the voxel count is the loaded ridge's, whatever the file says."""
    path = Path(folder) / "subject.json"
    info = json.loads(path.read_text())
    participant = info.get("participant")
    if participant is not None and not isinstance(participant, str):
        raise ValueError(f"{path}: participant must be a BIDS label or null, got {participant!r}")
    voxels = model.config.voxels[model.config.subject_index(info["subject"])]
    if info.get("voxels") not in (None, voxels):
        raise ValueError(f"{path}: voxels {info['voxels']} but the ridge of {info['subject']!r} takes {voxels}")
    return ModelIdentity(info["subject"], participant, int(voxels), str(info.get("voxel_space") or ""))


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
