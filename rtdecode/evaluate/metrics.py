"""MindEye2's image metrics as pure functions: arrays in, one score per trial out.

Definitions follow MindEye2's ``src/final_evaluations.ipynb``: both images at 256 x 256 first; PixCorr
and SSIM after ``transforms.Resize(425)``; SSIM on scikit-image's gray conversion with Gaussian weights
(sigma 1.5), population covariance and a data range of 1. The notebook also passes ``multichannel=True``,
which scikit-image 0.21 and later ignore for these 2-D gray images; we compute the same 2-D SSIM.
2-way identification correlates every real image's features with every reconstruction's; a trial's
score is the share of the other real images whose features correlate less with its reconstruction
than its own image does (ties count as failures, as the notebook's strict ``<`` does). The pool holds
each image once, as MindEye2's does (one row per test image), so a repeated image is never compared
with itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.features import resize

SIZE = 256  # every image is brought to 256 x 256 before any metric
PIXEL_SIZE = 425  # PixCorr and SSIM resize again to 425


def to_256(images: torch.Tensor) -> torch.Tensor:
    """``transforms.Resize((256, 256))`` as MindEye2's torchvision applied it (bilinear, no antialias)."""
    if images.shape[-2:] == (SIZE, SIZE):
        return images.float()
    return F.interpolate(images.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)


def pixcorr(images: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Per-trial Pearson correlation of all pixels (3 channels) at 425 px."""
    a = resize(images, PIXEL_SIZE).reshape(len(images), -1).double().numpy()
    b = resize(recons, PIXEL_SIZE).reshape(len(recons), -1).double().numpy()
    return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)])


def ssim(images: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Per-trial SSIM of the gray images at 425 px, with MindEye2's settings."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    gray_a = rgb2gray(resize(images, PIXEL_SIZE).permute(0, 2, 3, 1).numpy())
    gray_b = rgb2gray(resize(recons, PIXEL_SIZE).permute(0, 2, 3, 1).numpy())
    return np.array([structural_similarity(rec, im, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0) for im, rec in zip(gray_a, gray_b, strict=True)])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.sqrt((x * x).sum(axis=1, keepdims=True)), 1e-300)


def correlations(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N, N) Pearson r between real row i and prediction row j (``np.corrcoef(real, pred)[:N, N:]``)."""
    return _unit_rows(real) @ _unit_rows(pred).T


def two_way(real: np.ndarray, pred: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """Per-reconstruction 2-way identification: for reconstruction j of image ``owner[j]``, the share of
    the *other* images i with r(real_i, pred_j) < r(real_owner[j], pred_j). ``real`` holds one row per
    distinct image, so another showing of the same image is never a competitor (a tie that would fail);
    ``owner`` defaults to row j of ``real`` for reconstruction j. The mean is MindEye2's figure."""
    n_images, n = len(real), len(pred)
    owner = np.arange(n) if owner is None else np.asarray(owner)
    if n_images < 2:
        return np.full(n, np.nan)
    r = correlations(real, pred)  # (images, reconstructions)
    own = r[owner, np.arange(n)]
    wins = (r < own[None, :]).sum(axis=0)
    return wins / (n_images - 1)


def correlation_distance(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-trial ``scipy.spatial.distance.correlation`` of features (lower is better)."""
    return 1.0 - (_unit_rows(real) * _unit_rows(pred)).sum(axis=1)
