"""Run by tests/test_calibration_distributed.py under a launcher (or alone, as one process).

    python tests/distributed_train.py train OUT.safetensors [CHECKPOINTS [resume]]
    python tests/distributed_train.py compare WORK

``train`` trains a tiny two-subject model and saves its weights, history and predictions;
``compare`` pretrains a shared model, then calibrates a third subject with ``compare_scratch``.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from calibration.data import SubjectData
from calibration.trainer import TrainConfig, predict_blur, predict_tokens, train
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2


def subject(name: str, n: int, v: int, seed: int, distinct: int | None = None,
            token_shape: tuple[int, int] = (4, 8)) -> SubjectData:
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, *token_shape)).astype(np.float32)
    size = token_shape[0] * token_shape[1]
    betas = tokens.reshape(n, -1) @ rng.normal(size=(size, v)) / np.sqrt(size / 32) + rng.normal(0, 0.5, (n, v))
    blur = None
    if token_shape == (4, 8):
        blur = (tokens.reshape(n, -1) @ rng.normal(0, 0.2, size=(32, 4 * 28 * 28))).reshape(n, 4, 28, 28)
        blur = blur.astype(np.float32)
    images = [f"{name}-im{i % (distinct or n)}" for i in range(n)]
    return SubjectData(name, betas.astype(np.float32), images, tokens, blur=blur)


def tiny_model() -> MindEye2:
    torch.manual_seed(0)
    # Dropout off: its masks are the one draw a process makes for its own rows only.
    model = MindEye2(MindEye2Config(subjects=["a", "b"], voxels=[30, 26], hidden=16, n_blocks=1, clip_tokens=4,
                                    clip_dim=8, blurry=True, blurry_channels=(32, 32, 32), prior_depth=1,
                                    prior_dim_head=4, drop=0.0))
    model.backbone.bdropout.p = 0.0
    return model


def train_tiny(out: str, checkpoints: str | None = None, resume: bool = False) -> None:
    model = tiny_model()
    a, b = subject("a", 64, 30, 1).zscored(), subject("b", 48, 26, 2).zscored()
    history = train(model, [a, b], TrainConfig(epochs=2, batch_size=16, max_lr=1e-3, mixup_pct=0.5, cpu=True,
                                               checkpoint_s=0.0), out=checkpoints, resume=resume)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return
    print(f"processes: {history['processes']}", flush=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["history.loss"] = torch.tensor(history["loss"])
    tensors["history.blurry"] = torch.tensor(history["blurry"])
    tensors["predicted.a"] = torch.from_numpy(predict_tokens(model, a))
    tensors["blurry.a"] = torch.from_numpy(predict_blur(model, a))
    save_file(tensors, out)


def compare(work: str) -> None:
    from calibration.build import calibrate, pretrain
    from models.standin import StandInEmbedder

    shape = StandInEmbedder().token_shape  # calibrate sizes a fresh model for this token space
    config = TrainConfig(epochs=2, batch_size=16, max_lr=1e-3, cpu=True, checkpoint_s=1e9)
    a, b = subject("a", 64, 30, 1, token_shape=shape).zscored(), subject("b", 48, 26, 2, token_shape=shape).zscored()
    pretrain([a, b], Path(work) / "shared", config, hidden=16)
    new = subject("c", 240, 28, 3, distinct=120, token_shape=shape)  # row i shows image i % 120
    new = new.subset(np.r_[np.arange(0, 120), np.arange(120, 144)])  # images 0-23 twice (held out), 24-119 once
    calibrate(new, Path(work) / "new", config, pretrained=Path(work) / "shared", compare_scratch=True, hidden=16)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    if sys.argv[1] == "compare":
        compare(sys.argv[2])
    else:
        train_tiny(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None, len(sys.argv) > 4)
