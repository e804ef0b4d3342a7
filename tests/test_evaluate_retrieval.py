"""Retrieval as MindEye2's final_evaluations.ipynb computes it: which direction is which, repeats, its draws;
the true images' tokens at its 256 px; network features only for what was reconstructed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdecode.evaluate import metrics
from rtdecode.evaluate.collect import Trial
from rtdecode.evaluate.retrieval import Pool, draws, pools, ranks, score_pool


def _mindeye2_fwd_bwd(images: np.ndarray, brains: np.ndarray, picks=None) -> tuple[float, float]:
    """MindEye2's retrieval cell written out from its notebook and utils.py (batchwise_cosine_similarity
    ends with a transpose; topk compares argsort's last column with the labels), over the given draws."""
    def batchwise_cosine_similarity(z, b):
        z, b = z.flatten(1), b.flatten(1).T
        return ((z @ b) / (torch.linalg.norm(z, dim=1, keepdim=True) @ torch.linalg.norm(b, dim=0, keepdim=True))).T

    fwds, bwds = [], []
    for pick in picks if picks is not None else [np.arange(len(images))]:
        emb = torch.nn.functional.normalize(torch.as_tensor(images[pick], dtype=torch.float64).flatten(1), dim=-1)
        emb_ = torch.nn.functional.normalize(torch.as_tensor(brains[pick], dtype=torch.float64).flatten(1), dim=-1)
        labels = torch.arange(len(emb))
        bwd_sim = batchwise_cosine_similarity(emb, emb_)  # clip, brain
        fwd_sim = batchwise_cosine_similarity(emb_, emb)  # brain, clip
        fwds.append(float(torch.sum(torch.argsort(fwd_sim, axis=1)[:, -1] == labels) / len(labels)))
        bwds.append(float(torch.sum(torch.argsort(bwd_sim, axis=1)[:, -1] == labels) / len(labels)))
    return float(np.mean(fwds)), float(np.mean(bwds))


def test_the_issues_three_by_three_case_each_direction_named_for_what_it_computes():
    images = np.eye(3)
    brains = np.array([[1, 0, 0], [.9, .44, 0], [0, 0, 1]])
    fwd, bwd = _mindeye2_fwd_bwd(images, brains)
    assert (fwd, bwd) == pytest.approx((1.0, 2 / 3))  # MindEye2's code: "image retrieval" first
    got, _, _ = score_pool(Pool(["a", "b", "c"], images, brains, np.arange(3)))
    # brain sample 1 is nearer image 0 than image 1: for each brain sample, which image -> 2 of 3;
    # for each image, which brain sample -> every image finds its own.
    assert got["image_for_brain_top1_all"] == pytest.approx(2 / 3)
    assert got["brain_for_image_top1_all"] == pytest.approx(1.0)
    assert got["brain_for_image_top1_all"] == pytest.approx(fwd) and got["image_for_brain_top1_all"] == pytest.approx(bwd)


def test_repeats_mindeye2_averages_the_outputs_and_single_trials_never_compete_with_their_own_image():
    truth = {"a": np.array([1.0, 0, 0]), "b": np.array([0, 1.0, 0]), "c": np.array([0, 0, 1.0])}
    # image a shown twice: alone, one showing is nearer b and the other nearer c; their mean is nearest a
    tokens = np.array([[1, 1.2, 0], [1, -1.2, 1.5], [0, 1, 0.1], [0, 0, 1]])
    both = pools(["a", "a", "b", "c"], tokens, truth)
    averaged, single = both["averaged"], both["single-trial"]
    assert averaged.images == single.images == ["a", "b", "c"]
    np.testing.assert_allclose(averaged.brains[0], [1, 0, 0.75])
    assert list(single.owner) == [0, 0, 1, 2]
    avg, _, _ = score_pool(averaged)
    one, rank_of_image, rank_of_brain = score_pool(single)
    assert avg["image_for_brain_top1_all"] == 1.0 and avg["retrieval_brains"] == 3
    assert one["retrieval_brains"] == 4 and list(rank_of_image) == [2, 2, 1, 1]
    assert one["image_for_brain_top1_all"] == 0.5
    # for image a, showing 0 (cos .64) would beat showing 1 (.46), but it is not another image's brain sample
    assert list(rank_of_brain) == [1, 1, 1, 1]
    # two identical showings of one image: neither is the other's competitor (no tie to lose)
    _, rank_of_brain = ranks(np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]]), np.array([0, 0, 1]))
    assert list(rank_of_brain) == [1, 1, 1]


def test_mindeye2s_draws_and_its_figures_are_reproduced():
    n, ways = 61, 50  # 300-way needs 300 images; the same code path at 50
    np.random.seed(42)  # what utils.seed_everything(42) does to numpy, then the notebook's loop
    theirs = [np.random.choice(np.arange(n), size=ways, replace=False) for _ in range(30)]
    ours = draws(n, ways, 30, 42, "mindeye2")
    assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    rng = np.random.default_rng(5)
    images = rng.normal(size=(n, 4, 6))
    brains = images + 2.2 * rng.normal(size=(n, 4, 6))  # noisy enough that the two directions differ
    fwd, bwd = _mindeye2_fwd_bwd(images, brains, theirs)
    got, _, _ = score_pool(Pool([f"i{i}" for i in range(n)], images, brains, np.arange(n)), seed=42, scheme="mindeye2")
    assert fwd != bwd
    assert got[f"brain_for_image_top1_{ways}"] == pytest.approx(fwd)
    assert got[f"image_for_brain_top1_{ways}"] == pytest.approx(bwd)
    with pytest.raises(ValueError, match="draws: expected one of"):
        draws(n, ways, scheme="numpy")


def test_network_features_only_for_reconstructed_trials(tmp_path):
    import torchvision.models as tvm

    from models import registry
    from rtdecode.evaluate.score import network_features

    torch.manual_seed(1)
    torch.save(tvm.alexnet().state_dict(), registry.local_path("alexnet", tmp_path))
    trials = [Trial(1, 0, "realtime", "img-a", "k0"), Trial(1, 1, "realtime", "img-b", "k1"),
              Trial(1, 2, "realtime", "img-c", "k2")]
    g = torch.Generator().manual_seed(2)
    shown = {"img-a": torch.rand(3, 256, 256, generator=g), "img-b": torch.rand(3, 256, 256, generator=g),
             "img-c": torch.rand(3, 40, 40, generator=g)}  # could not go through the batch: must not be asked to
    recons = {"k0": torch.rand(3, 256, 256, generator=g), "k1": torch.rand(3, 256, 256, generator=g)}
    feats = network_features(trials, shown, recons, tmp_path, [])
    by_image, by_key = feats["AlexNet(2)"]
    assert sorted(by_image) == ["img-a", "img-b"] and sorted(by_key) == ["k0", "k1"]


def test_true_image_tokens_come_from_mindeye2s_256_px_images(tmp_path):
    from models.folder import load_embedder, write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2
    from rtdecode.evaluate.score import ImageSource, truth_tokens
    from rtdecode.gallery.builtin import StimulusSet

    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [37], hidden=32)), tmp_path / "model", "sim01")
    source = ImageSource(None)
    ids = ["sim-00002", "sim-00007"]
    shown = {i: metrics.to_256(torch.from_numpy(source.load(i)).permute(2, 0, 1).float()[None] / 255)[0] for i in ids}
    got = truth_tokens(shown, model)
    embedder = load_embedder(model)
    at_256 = embedder.embed(np.stack([shown[i].permute(1, 2, 0).numpy() for i in ids]))
    at_128 = embedder.embed(StimulusSet().by_id(ids))  # the decoder's gallery size: measurably different
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), at_256, rtol=1e-5, atol=1e-6)
    assert np.abs(at_256 - at_128).max() > 1e-3
