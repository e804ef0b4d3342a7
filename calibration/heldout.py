"""A fresh MindEye2 sized to the data, and a model scored on held-out images: what calibration's build and its
settings search (calibration.tuning) both use, kept below both."""

from __future__ import annotations

import numpy as np

from calibration.data import SubjectData, average_repeats
from calibration.trainer import predict_blur, predict_tokens
from models.mindeye2.config import MindEye2Config, standin_config
from models.mindeye2.model import MindEye2
from models.retrieval import n_way_top1, similarity, top_k
from models.standin import StandInEmbedder


def new_model(subjects: list[SubjectData], hidden: int) -> MindEye2:
    """A fresh model sized to the data's token shape: CPU-sized in the stand-in space, else published."""
    tokens, dim = subjects[0].tokens.shape[1:]
    names, voxels = [s.subject for s in subjects], [s.n_voxels for s in subjects]
    blurry = all(s.blur is not None for s in subjects)  # the low-level branch where there are VAE targets
    if (tokens, dim) == StandInEmbedder().token_shape:
        return MindEye2(standin_config(names, voxels, hidden, blurry=blurry))
    return MindEye2(MindEye2Config(subjects=names, voxels=voxels, hidden=hidden, clip_tokens=tokens, clip_dim=dim,
                                   blurry=blurry))


def blurry_scores(pred: np.ndarray, target: np.ndarray) -> dict:
    """Low-level fit of predicted VAE latents: mean L1, mean per-image Pearson r, and 2-way identification
    (is each prediction closer, by correlation, to its own image's latent than to each other image's?)."""
    p = pred.reshape(len(pred), -1)
    t = target.reshape(len(target), -1)
    pz = (p - p.mean(1, keepdims=True)) / (p.std(1, keepdims=True) + 1e-8)
    tz = (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-8)
    r = pz @ tz.T / p.shape[1]
    own = np.diag(r)
    two_way = float((own[:, None] > r).sum()) / (len(r) * (len(r) - 1)) if len(r) > 1 else float("nan")
    return {"l1": float(np.abs(p - t).mean()), "pearson": float(own.mean()), "two_way": two_way}


def evaluate(model: MindEye2, test: SubjectData) -> dict:
    """Held-out retrieval: repeats averaged, top-1 both ways at 300-way (MindEye2) and 50-way (Real-time
    MindEye), or as many ways as there are images; plus each image's top-5 among all held-out images."""
    test = average_repeats(test)
    pred = predict_tokens(model, test)
    out = {"held_out_images": len(test.betas), "retrieval": []}
    for n_way in sorted({min(300, len(test.betas)), min(50, len(test.betas))}, reverse=True):
        fwd, bwd = n_way_top1(pred, test.tokens, n_way=n_way)
        out["retrieval"].append({"n_way": n_way, "top1_brain_to_image": fwd, "top1_image_to_brain": bwd,
                                 "chance": 1 / n_way})
    out.update(out["retrieval"][-1])  # the smaller set's figures at the top level, as before
    if model.config.blurry and test.blur is not None:
        out["blurry"] = blurry_scores(predict_blur(model, test), test.blur)
    idx, scores = top_k(similarity(pred, test.tokens), 5)
    out["top5"] = [{"image": im, "top5": [test.images[j] for j in row], "scores": [round(float(v), 4) for v in sc]}
                   for im, row, sc in zip(test.images, idx, scores, strict=True)]
    return out
