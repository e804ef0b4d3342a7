"""Run by tests/test_calibration_distributed.py under a launcher: train a tiny model, save its weights.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_train.py OUT.safetensors
"""

import sys

import numpy as np
import torch
from safetensors.torch import save_file

from calibration.data import SubjectData
from calibration.trainer import TrainConfig, predict_blur, predict_tokens, train
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2


def subject(name: str, n: int, v: int, seed: int) -> SubjectData:
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, 4, 8)).astype(np.float32)
    betas = tokens.reshape(n, -1) @ rng.normal(size=(32, v)) + rng.normal(0, 0.5, (n, v))
    blur = (tokens.reshape(n, -1) @ rng.normal(0, 0.2, size=(32, 4 * 28 * 28))).reshape(n, 4, 28, 28)
    return SubjectData(name, betas.astype(np.float32), [f"im{i}" for i in range(n)], tokens,
                       blur=blur.astype(np.float32)).zscored()


def main(out: str) -> None:
    torch.manual_seed(0)
    # Dropout off: its masks are the one draw a process makes for its own rows only.
    model = MindEye2(MindEye2Config(subjects=["a", "b"], voxels=[30, 26], hidden=16, n_blocks=1, clip_tokens=4,
                                    clip_dim=8, blurry=True, blurry_channels=(32, 32, 32), prior_depth=1,
                                    prior_dim_head=4, drop=0.0))
    model.backbone.bdropout.p = 0.0
    a, b = subject("a", 64, 30, 1), subject("b", 48, 26, 2)
    history = train(model, [a, b],
                    TrainConfig(epochs=2, batch_size=16, max_lr=1e-3, mixup_pct=0.5, cpu=True))
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["history.loss"] = torch.tensor(history["loss"])
    tensors["history.blurry"] = torch.tensor(history["blurry"])
    tensors["predicted.a"] = torch.from_numpy(predict_tokens(model, a))
    tensors["blurry.a"] = torch.from_numpy(predict_blur(model, a))
    save_file(tensors, out)


if __name__ == "__main__":
    main(sys.argv[1])
