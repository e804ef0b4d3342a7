"""The feature networks MindEye2 scores reconstructions with, built from their published weight files.

Each network is the architecture MindEye2's ``final_evaluations.ipynb`` used (torchvision's AlexNet,
InceptionV3, EfficientNet-B1 and ResNet-50 for SwAV; OpenAI's CLIP ViT-L/14 through open_clip), read
with ``torch.load(weights_only=True)`` and loaded strictly. Nothing here downloads: a missing file is an
error naming it and the command that fetches it (``models.registry``), never a substitute network.

Preprocessing copies the notebook: the input is (N, 3, 256, 256) in [0, 1] (both images already at
MindEye2's 256 px); each network resizes with ``transforms.Resize(size)`` (bilinear) and normalises.
MindEye2's release setup.sh pins torch 2.1.0 / torchvision 0.16.0, whose ``Resize`` still resized
tensors without antialiasing by default (``antialias='warn'``; 0.17 made it True); so do we.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FeatureSpec:
    """One of MindEye2's feature metrics: the network, its weight file (registry name), nodes and input."""

    metric: str  # the column name in MindEye2's table
    file: str  # models.registry name of the weights
    node: str  # the layer read (torchvision feature-extractor node, or 'encode_image')
    size: int  # transforms.Resize(size) before normalising
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str  # 'two_way' (2-way identification, higher is better) or 'distance' (correlation distance)


SPECS: dict[str, FeatureSpec] = {s.metric: s for s in [
    FeatureSpec("AlexNet(2)", "alexnet", "features.4", 256, IMAGENET_MEAN, IMAGENET_STD, "two_way"),
    FeatureSpec("AlexNet(5)", "alexnet", "features.11", 256, IMAGENET_MEAN, IMAGENET_STD, "two_way"),
    FeatureSpec("InceptionV3", "inception-v3", "avgpool", 342, IMAGENET_MEAN, IMAGENET_STD, "two_way"),
    FeatureSpec("CLIP", "clip-vit-l-14", "encode_image", 224, CLIP_MEAN, CLIP_STD, "two_way"),
    FeatureSpec("EffNet-B", "efficientnet-b1", "avgpool", 255, IMAGENET_MEAN, IMAGENET_STD, "distance"),
    FeatureSpec("SwAV", "swav-resnet50", "avgpool", 224, IMAGENET_MEAN, IMAGENET_STD, "distance"),
]}


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``transforms.Resize(size)`` of torchvision 0.16 on tensors: shorter side to ``size``, bilinear, no antialias."""
    h, w = images.shape[-2:]
    if h <= w:
        out = (size, int(size * w / h))
    else:
        out = (int(size * h / w), size)
    if out == (h, w):
        return images
    return F.interpolate(images, size=out, mode="bilinear", align_corners=False, antialias=False)


def prepare(images: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    x = resize(images, spec.size)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


# -- checkpoint conversion ---------------------------------------------------------------------------
SWAV_DROPPED = ("projection_head.", "prototypes.")  # SwAV's training heads; the hub model drops them too


def convert_swav(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SwAV's published checkpoint (DataParallel ``module.`` keys, projection head, prototypes) -> the
    trunk of torchvision's ResNet-50, whose ``fc`` SwAV never trained (the hub model leaves it random)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith(SWAV_DROPPED):
            out[key] = value
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def _load_strict(module: torch.nn.Module, state: dict, path: Path, skip: tuple[str, ...] = ()) -> None:
    want = {k for k in module.state_dict() if not k.startswith(skip)}
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(f"{path}: not the expected weights ({len(missing)} keys missing, e.g. {missing[:3]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    module.load_state_dict(state, strict=not skip)


def build_network(file: str, path: str | Path, config_path: str | Path | None = None) -> torch.nn.Module:
    """The architecture registered as ``file`` with the weights at ``path`` (eval mode, no gradients)."""
    import torchvision.models as tvm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
    if file == "clip-vit-l-14":
        import open_clip

        if config_path is not None:  # tests register a tiny ViT config and load it the same way
            open_clip.add_model_config(str(config_path))
        name = Path(config_path).stem if config_path is not None else "ViT-L-14-quickgelu"
        model = open_clip.create_model(name, pretrained=str(path), weights_only=True, require_pretrained=True)
        return model.eval().requires_grad_(False)
    if file == "alexnet":
        net, state, skip = tvm.alexnet(), _read(path), ()
    elif file == "inception-v3":
        # What inception_v3(weights=...) builds: the aux head present, inputs re-normalised inside.
        net, state, skip = tvm.inception_v3(aux_logits=True, transform_input=True, init_weights=False), _read(path), ()
    elif file == "efficientnet-b1":
        net, state, skip = tvm.efficientnet_b1(), _read(path), ()
    elif file == "swav-resnet50":
        net, state, skip = tvm.resnet50(), convert_swav(_read(path)), ("fc.",)
    else:
        raise KeyError(f"no feature network registered as {file!r}")
    _load_strict(net, state, path, skip)
    return net.eval().requires_grad_(False)


class FeatureExtractor:
    """Features of one network for MindEye2's metrics: (N, 3, 256, 256) in [0, 1] -> {metric: (N, F)}."""

    def __init__(self, file: str, network: torch.nn.Module, batch_size: int = 16) -> None:
        self.file, self.network, self.batch_size = file, network, batch_size
        self.specs = [s for s in SPECS.values() if s.file == file]
        self._run: Callable[[torch.Tensor], dict[str, torch.Tensor]]
        if file == "clip-vit-l-14":
            self._run = lambda x: {"encode_image": network.encode_image(x)}
        else:
            from torchvision.models.feature_extraction import create_feature_extractor

            extractor = create_feature_extractor(network, return_nodes=sorted({s.node for s in self.specs}))
            self._run = extractor

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {s.metric: [] for s in self.specs}
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            for size_group in {(s.size, s.mean) for s in self.specs}:
                specs = [s for s in self.specs if (s.size, s.mean) == size_group]
                feats = self._run(prepare(batch, specs[0]))
                for s in specs:
                    out[s.metric].append(feats[s.node].float().flatten(1).cpu().numpy())
        return {m: np.concatenate(v) for m, v in out.items()}
