"""CLIP tokens through OpenCLIP's own loader (tiny model), the embedding cache, retrieval, the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.clip import ClipTokenEmbedder, EmbeddingCache, published_preprocess
from models.registry import REGISTRY, check, require
from models.retrieval import n_way_top1, similarity, top1_both_ways, top_k
from models.standin import StandInEmbedder
from rtdecode.cli import main

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 48, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny OpenCLIP model with bigG's token grid (224 px, patch 14: 256 tokens), saved as a weights file."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "rtd-tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("rtd-tiny-clip")
    torch.save(model.state_dict(), folder / "tiny.pt")
    return model, folder / "tiny.pt", config


def test_tokens_are_patch_tokens_after_ln_post_with_the_published_preprocessing(tiny_clip, rng):
    model, weights, config = tiny_clip
    embedder = ClipTokenEmbedder("rtd-tiny-clip", weights, config_path=config)
    images = rng.integers(0, 256, (3, 96, 80, 3), dtype=np.uint8)  # not square, not 224
    tokens = embedder.embed(images)
    assert tokens.shape == (3, 256, 48)
    # By hand: resize, (x+1)/2, normalise; the tower's tokens after ln_post, no projection.
    x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
    x = published_preprocess(x)
    black = published_preprocess(torch.zeros(1, 3, 50, 50))
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    # The quirk: black arrives as 0.5 grey, so the encoder sees [0.5, 1].
    assert torch.allclose(black[0, :, 10, 10], (0.5 - mean) / std, atol=1e-6)
    visual = model.visual.eval()
    with torch.no_grad():
        h = visual.transformer(visual._embeds(x))
        expected = visual.ln_post(h)[:, 1:]
    np.testing.assert_allclose(tokens, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_cache_embeds_each_image_once(tmp_path, rng):
    cache = EmbeddingCache(StandInEmbedder(), tmp_path, dtype=np.float32)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    first = cache.embed(images)
    again = cache.embed(images[[2, 0]])
    assert cache.computed == 4
    np.testing.assert_array_equal(again, first[[2, 0]])
    changed = images[1].copy()
    changed[0, 0, 0] ^= 1
    cache.embed(changed[None])
    assert cache.computed == 5  # one changed pixel is a different image
    assert len(list((tmp_path / StandInEmbedder().id).glob("*.npy"))) == 5


def test_retrieval_by_cosine_of_flattened_tokens(rng):
    gallery = rng.normal(size=(60, 5, 7))
    predicted = gallery + rng.normal(0, 0.3, gallery.shape)
    sim = similarity(predicted, gallery)
    assert sim.shape == (60, 60) and np.allclose(np.diag(similarity(gallery, gallery)), 1.0)
    assert top1_both_ways(sim) == (1.0, 1.0)
    idx, scores = top_k(sim, 5)
    assert idx.shape == (60, 5) and (idx[:, 0] == np.arange(60)).all() and (np.diff(scores, axis=1) <= 0).all()
    chance = n_way_top1(rng.normal(size=(60, 35)), rng.normal(size=(60, 35)), n_way=50)
    assert max(chance) < 0.2  # unrelated predictions sit near 1/50
    with pytest.raises(ValueError, match="features per item"):
        similarity(predicted, gallery[:, :4])


def test_registry_check_and_clear_missing_file_message(tmp_path, capsys):
    assert {"unclip", "openclip-bigG", "mindeye2-multisubject-subj01", "mindeye2-multisubject-1024"} <= set(REGISTRY)
    (tmp_path / "train_logs" / "final_multisubject_subj01").mkdir(parents=True)
    (tmp_path / "train_logs" / "final_multisubject_subj01" / "last.pth").write_bytes(b"x")
    present = {f.name for f, _, ok in check(tmp_path) if ok}
    assert present == {"mindeye2-multisubject-subj01"}
    with pytest.raises(FileNotFoundError, match=r"unclip6_epoch0_step110000\.ckpt is missing .*"
                                                 r"rtdecode models download unclip --folder"):
        require("unclip", tmp_path)
    assert main(["models", "check", "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok       mindeye2-multisubject-subj01" in out and "missing  unclip" in out
    assert main(["models", "download", "no-such-file", "--folder", str(tmp_path)]) == 2
    assert "unknown model file 'no-such-file'" in capsys.readouterr().err


def test_bigg_at_full_size_gives_the_published_token_grid_after_ln_post():
    """No weights, no memory: ViT-bigG-14 on the meta device, through the embedder's own forward path."""
    embedder = ClipTokenEmbedder.without_weights("ViT-bigG-14")
    seen = []
    hook = embedder.visual.ln_post.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    try:
        tokens = embedder.tokens(torch.zeros(2, 3, 256, 256, device="meta"))
    finally:
        hook.remove()
    assert tuple(tokens.shape) == (2, 256, 1664)  # 224 px / patch 14 = 16 x 16 tokens of width 1664
    # The layer MindEye2 reads (open_clip 2.24, as it pins): ln_post over all 257 tokens, then the class
    # token dropped; not the pre-norm tokens that older open_clip returned.
    assert seen == [(2, 257, 1664)] and embedder.visual.final_ln_after_pool is False
    assert embedder.visual.attn_pool is None and embedder.visual.pool_type == "tok"
