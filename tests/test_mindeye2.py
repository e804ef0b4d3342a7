"""MindEye2 networks: published layouts load strictly; tiny models round-trip through the real loaders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models.mindeye2.checkpoint import (
    config_from_state_dict,
    convert_to_safetensors,
    load_pretrained,
    load_published,
    model_from_state_dict,
    published_subjects,
    save_pretrained,
)
from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2

from conftest import SHARED

LISTINGS = SHARED / "reference" / "mindeye2-state-dicts"
PUBLISHED = [  # listing, a published folder name, parameters (mindeye2.md), hidden, blurry branch
    ("single4096", "final_subj01_pretrained_1sess_24bs", 2_227_294_844, 4096, True),
    ("multi4096", "final_multisubject_subj01", 2_575_262_332, 4096, True),
    ("multi1024nolow", "multisubject_subj01_1024hid_nolow_300ep", 816_319_768, 1024, False),
]


def tiny_config(**kw) -> MindEye2Config:
    """Unequal sizes everywhere so a transposed weight cannot load."""
    base = dict(subjects=["subj02", "subj05"], voxels=[37, 29], hidden=24, n_blocks=2, clip_tokens=5, clip_dim=32,
                blurry=True, blurry_channels=(32, 32, 64), prior_depth=2, prior_dim_head=8, prior_timesteps=100)
    base.update(kw)
    return MindEye2Config(**base)


def _meta_state(listing: str) -> dict[str, torch.Tensor]:
    state = {}
    for line in (LISTINGS / f"{listing}.txt").read_text().splitlines():
        if "(" in line and not line.startswith("num"):
            key = line.split()[0]
            shape = tuple(int(s) for s in line[line.index("(") + 1:line.index(")")].replace(" ", "").split(",") if s)
            state[key] = torch.empty(shape, device="meta")
    return state


@pytest.mark.skipif(not LISTINGS.is_dir(), reason="../shared/reference/mindeye2-state-dicts not present")
@pytest.mark.parametrize("listing, name, n_params, hidden, blurry", PUBLISHED)
def test_published_layouts_load_strictly_on_the_meta_device(listing, name, n_params, hidden, blurry):
    state = _meta_state(listing)
    n_ridges = sum(1 for k in state if k.startswith("ridge.") and k.endswith(".weight"))
    model = model_from_state_dict(state, published_subjects(name, n_ridges))  # strict=True inside
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert (model.config.hidden, model.config.blurry) == (hidden, blurry)
    assert set(model.state_dict()) == set(state)
    if "multisubject" in name:
        assert model.config.subjects == ["subj02", "subj03", "subj04", "subj05", "subj06", "subj07", "subj08"]
        assert model.config.subject_index("subj05") == 3
    with pytest.raises(RuntimeError, match="Unexpected key"):  # strict: nothing extra is silently ignored
        model_from_state_dict({**state, "backbone.extra.weight": torch.empty(3, device="meta")})
    with pytest.raises(ValueError, match="not a MindEye2 state dict"):
        model_from_state_dict({k: v for k, v in state.items() if "noise_scheduler" not in k})


def test_tiny_model_round_trips_through_the_published_format_and_safetensors(tmp_path):
    torch.manual_seed(0)
    model = MindEye2(tiny_config()).eval()
    folder = tmp_path / "train_logs" / "final_multisubject_subj01"
    folder.mkdir(parents=True)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, folder / "last.pth")
    loaded = load_published(folder / "last.pth", subjects=["subj02", "subj05"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    voxels = torch.randn(3, 29)
    with torch.no_grad():
        a, b = model(voxels, "subj05"), loaded(voxels, 1)
    assert a[0].shape == (3, 5, 32) and a[1].shape == (3, 5, 32) and a[2][0].shape == (3, 4, 28, 28)
    assert a[2][1].shape == (3, 49, 512)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2][0], b[2][0])
    out = convert_to_safetensors(folder / "last.pth", tmp_path / "converted", subjects=["subj02", "subj05"])
    again = load_pretrained(out)
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_loader_never_runs_a_pickled_object_and_refuses_a_foreign_dict(tmp_path):
    from legacy_marker import Tripwire

    # A stored object is never run: weights_only refuses the file, the restricted reader takes only the
    # tensors (models/legacy_pickle.py), and an empty state dict is then named for what it lacks.
    torch.save({"model_state_dict": {}, "payload": Tripwire(str(tmp_path / "ran.txt"))}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a MindEye2 state dict: missing or malformed 'ridge.linears.0.weight'"):
        load_published(tmp_path / "evil.pth")
    assert not (tmp_path / "ran.txt").exists()
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="expected a dict with 'model_state_dict'"):
        load_published(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="rtdecode models download"):
        load_published(tmp_path / "absent.pth")


def test_mixer_is_the_ridge_output_plus_a_constant_in_eval_mode():
    torch.manual_seed(1)
    model = MindEye2(tiny_config(blurry=False)).eval()
    ridge_out = model.ridge(torch.randn(4, 1, 37), 0)
    zero_out = model.ridge(torch.zeros(1, 1, 37), 0)
    with torch.no_grad():
        before = model.backbone(ridge_out)[0]
        for p in model.backbone.mixer_blocks1.parameters():
            p.add_(torch.randn_like(p))  # mixer_blocks1 has no effect at seq_len 1
        after = model.backbone(ridge_out)[0]
        # The mixer adds the same constant to every input: backbone_linear(ridge + c) is affine in ridge.
        w = model.backbone.backbone_linear
        constant = model.backbone(zero_out)[0].reshape(1, -1) - w(zero_out.reshape(1, -1))
    assert torch.allclose(before, after, atol=1e-5)
    expected = (w(ridge_out.reshape(4, -1)) + constant).reshape(before.shape)
    assert torch.allclose(before, expected, atol=1e-4)


def test_config_is_read_off_the_tensors_and_new_subjects_get_a_fresh_ridge(tmp_path):
    model = MindEye2(tiny_config())
    config = config_from_state_dict(model.state_dict(), ["subj02", "subj05"])
    assert config == model.config
    index = model.add_subject("sub-new", 41)
    assert index == 2 and model(torch.randn(2, 41), "sub-new")[1].shape == (2, 5, 32)
    with pytest.raises(ValueError, match="already has ridge"):
        model.add_subject("subj02", 10)
    with pytest.raises(KeyError, match="has no ridge in this model"):
        model(torch.randn(2, 41), "subj09")
    save_pretrained(model, tmp_path / "m")
    assert load_pretrained(tmp_path / "m").config.subjects == ["subj02", "subj05", "sub-new"]


def test_prior_samples_and_trains_on_tiny_tokens():
    torch.manual_seed(2)
    model = MindEye2(tiny_config(blurry=False))
    brain = torch.randn(3, 5, 32)
    target = torch.randn(3, 5, 32)
    loss, pred = model.diffusion_prior.loss(target, brain)
    loss.backward()
    assert pred.shape == target.shape and model.diffusion_prior.net.learned_query.grad is not None
    model.eval()
    a = model.diffusion_prior.sample(brain, steps=20, generator=torch.Generator().manual_seed(7))
    b = model.diffusion_prior.sample(brain, steps=20, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 5, 32) and torch.equal(a, b)


@pytest.mark.skipif(importlib.util.find_spec("dalle2_pytorch") is None, reason="dalle2-pytorch not installed")
def test_prior_matches_dalle2_pytorch():
    from dalle2_pytorch.dalle2_pytorch import CausalTransformer, DiffusionPrior, NoiseScheduler

    torch.manual_seed(0)
    model = MindEye2(tiny_config(blurry=False)).eval()
    prior = model.diffusion_prior
    reference = CausalTransformer(dim=32, depth=2, dim_head=8, heads=4)
    for layer in reference.layers:
        layer[0].causal = False  # MindEye2 builds it non-causal
    reference.load_state_dict(prior.net.causal_transformer.state_dict(), strict=True)
    x = torch.randn(2, 11, 32)
    assert torch.allclose(reference(x), prior.net.causal_transformer(x), atol=1e-6)
    schedule = NoiseScheduler(beta_schedule="cosine", timesteps=100, loss_type="l2")
    for name, value in prior.noise_scheduler.named_buffers():
        assert torch.equal(schedule.get_buffer(name), value), name

    class Adapter(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.inner, self.dim, self.self_cond = net, net.dim, False

        def forward_with_cond_scale(self, x, t, self_cond=None, cond_scale=1.0, text_embed=None):
            return self.inner(x, t, text_embed)

    ref = DiffusionPrior(net=Adapter(prior.net), image_embed_dim=32, timesteps=100, cond_drop_prob=0.2,
                         condition_on_text_encodings=False, image_embed_scale=None)
    brain = torch.randn(2, 5, 32)
    torch.manual_seed(5)
    expected = ref.p_sample_loop_ddim(brain.shape, dict(text_embed=brain), timesteps=20)
    torch.manual_seed(5)
    assert torch.allclose(prior.sample(brain, steps=20), expected, atol=1e-6)


def test_bf16_inference_from_a_converted_folder(tmp_path):
    torch.manual_seed(4)
    save_pretrained(MindEye2(tiny_config()), tmp_path / "m")
    model = load_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert model.backbone.backbone_linear.weight.dtype == torch.bfloat16
    assert model.diffusion_prior.noise_scheduler.betas.dtype == torch.float32  # schedule stays exact
    with torch.no_grad():
        backbone, clip, (blur, _) = model(torch.randn(2, 37, dtype=torch.bfloat16), "subj02")
        tokens = model.diffusion_prior.sample(backbone, steps=20, generator=torch.Generator().manual_seed(0))
    assert tokens.dtype == torch.bfloat16 and tokens.shape == (2, 5, 32) and torch.isfinite(tokens.float()).all()
    assert blur.shape == (2, 4, 28, 28)


def test_prior_attention_through_sdpa_equals_the_published_einsum_softmax():
    """The fused attention call computes what the published prior writes out: a shared key/value head with a
    null key in front, cosine-normalised q and k, a relative position bias, softmax in float32."""
    import math

    import torch.nn.functional as F

    from models.mindeye2.prior_net import Attention, RelPosBias, Rotary

    torch.manual_seed(0)
    attn = Attention(48, 16, 3, Rotary(16)).eval()
    x = torch.randn(2, 7, 48)
    bias = RelPosBias(3)(7, 8, x.device)
    with torch.no_grad():
        h = attn.norm(x)
        q = attn.to_q(h).reshape(2, 7, 3, -1).transpose(1, 2)
        k, v = attn.to_kv(h).chunk(2, dim=-1)
        q, k = attn.rotary_emb(q), attn.rotary_emb(k)
        null_k, null_v = (t.expand(2, 1, -1) for t in attn.null_kv.unbind(dim=-2))
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        root = math.sqrt(attn.scale)
        q, k = F.normalize(q, dim=-1) * root, F.normalize(k, dim=-1) * root
        sim = torch.einsum("bhid,bjd->bhij", q, k) + bias
        out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1, dtype=torch.float32), v)
        want = attn.to_out(out.transpose(1, 2).reshape(2, 7, -1))
        torch.testing.assert_close(attn(x, bias), want, rtol=1e-5, atol=1e-6)
