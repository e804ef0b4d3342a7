"""Device discipline off a GPU: the live decode path runs with the model on the meta device under a
TorchFunctionMode that fails any op whose generator or tensor inputs sit on another device than its
output, and any random draw made off the model's device. Round 2's decoder passed a CPU generator to
``torch.randn(..., device=<the model's>)``, which a CUDA kernel refuses; this is the check that walks it."""

from __future__ import annotations

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from models.mindeye2.config import MindEye2Config
from models.mindeye2.model import MindEye2
from rtdecode.decoder.core import Decoder

# Explicit crossings between host and device: allowed (the beta comes in, results go out).
CROSSINGS = {"to", "cpu", "cuda", "numpy", "copy_", "pin_memory", "tolist", "item", "as_tensor", "tensor",
             "from_numpy", "__array__"}
RANDOM = {"randn", "rand", "randint", "randn_like", "rand_like", "randint_like", "normal", "normal_", "uniform_",
          "bernoulli", "bernoulli_", "multinomial", "randperm", "exponential_", "random_"}
N_VOXELS, TOKENS, DIM = 40, 5, 24


class DeviceDiscipline(TorchFunctionMode):
    """Records every op whose generator or inputs are on another device than its outputs, and every random
    draw whose output is not on ``device``."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device, self.faults, self.draws = torch.device(device), [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in CROSSINGS:
            return out
        inputs = {t.device for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        outputs = {t.device for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        generator = kwargs.get("generator")
        if generator is not None and outputs and {generator.device} != outputs:
            self.faults.append(f"{name}: generator on {generator.device}, output on {sorted(map(str, outputs))}")
        if name in RANDOM or getattr(func, "__module__", "") == "torch.nn.init":
            self.draws += 1
            if outputs != {self.device}:
                self.faults.append(f"{name}: drawn on {sorted(map(str, outputs))}, the model is on {self.device}")
        if outputs and inputs - outputs:
            self.faults.append(f"{name}: inputs on {sorted(map(str, inputs))}, output on {sorted(map(str, outputs))}")
        return out


def _decoders(device: str, seed: int = 0) -> tuple[Decoder, Decoder]:
    """A tiny MindEye2 with the blurry branch, with tiny unCLIP, and with the SD VAE (the blurry tier)."""
    from test_unclip import TINY, TINY_VAE

    from models.blurry import build_sd_vae
    from models.unclip.pipeline import UnclipReconstructor, UnclipSettings, build_modules

    torch.manual_seed(0)
    config = MindEye2Config(subjects=["s"], voxels=[N_VOXELS], hidden=32, n_blocks=2, clip_tokens=TOKENS,
                            clip_dim=DIM, blurry=True, blurry_channels=(32, 32, 64), prior_depth=1, prior_dim_head=8)
    with torch.device(device):
        model = MindEye2(config).eval()
    unet, vae = build_modules(TINY, TINY_VAE, device=device)
    vae.encoder, vae.quant_conv = None, None
    rec = UnclipReconstructor(unet, vae, UnclipSettings(steps=3, size=64))
    gallery = np.random.default_rng(2).normal(size=(7, TOKENS, DIM)).astype(np.float32)
    ids = [f"g{i}" for i in range(7)]
    sd = build_sd_vae((32, 32, 64, 64), device=device).eval()
    return (Decoder(model, "s", None, ids, gallery, unclip=rec, seed=seed),
            Decoder(model, "s", None, ids, gallery, vae=sd, seed=seed))


def test_the_live_decode_path_keeps_to_the_models_device_on_meta():
    """Meta tensors hold no numbers, so the check stops at the last tensor op: the copies to the host at the
    end (tokens, similarity row, image) are the next test's, on the CPU."""
    beta = np.random.default_rng(1).normal(size=N_VOXELS).astype(np.float32)
    for decoder in _decoders("meta"):
        with DeviceDiscipline("meta") as mode:
            d, image = decoder.decode_on_device(beta)
        assert mode.faults == []
        # Every draw went through the check: the prior's 19 (the start and 18 of its 19 steps), unCLIP's 4.
        assert mode.draws == 19 + 4 * (decoder.unclip is not None)
        assert {t.device.type for t in (d.tokens, d.clip, d.blurry, d.similarity, image)} == {"meta"}
        assert d.similarity.shape == (1, 7) and d.similarity.dtype == torch.float32
        assert image.shape in {(3, 64, 64), (3, 224, 224)}


def test_decode_end_to_end_on_the_cpu_is_seeded_by_the_decoders_own_generator():
    beta = np.random.default_rng(1).normal(size=N_VOXELS).astype(np.float32)
    decoder, blurry = _decoders("cpu")
    assert decoder.generator.device == decoder.device
    with DeviceDiscipline("cpu") as mode:
        ret, image = decoder.decode(beta)
    assert mode.faults == []
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and len(ret.ids) == 5
    assert set(ret.timings_ms) == {"backbone_ms", "retrieval_ms", "prior_ms", "reconstruction_ms"}
    from models.retrieval import similarity, top_k

    idx, _ = top_k(similarity(ret.clip[None], decoder.gallery.numpy()), 5)
    assert ret.ids == [f"g{i}" for i in idx[0]]  # the device's retrieval is the evaluation's
    again = _decoders("cpu")[0]
    torch.manual_seed(99)  # the global generator moved: the decoder's own is what its draws follow
    d, on_device = again.decode_on_device(beta)  # the same seed: the same draws, host glue or not
    assert torch.equal(d.tokens[0].float(), torch.from_numpy(ret.tokens))
    same_seed = (on_device.permute(1, 2, 0).numpy().clip(0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(same_seed, image)
    other = _decoders("cpu", seed=1)[0].decode(beta)[1]
    assert not np.array_equal(other, image)  # the seed is what the draws follow
    ret_b, blurry_image = blurry.decode(beta)
    assert blurry.tier == "blurry" and blurry_image.shape == (224, 224, 3)


def test_the_check_itself_sees_host_generators_host_draws_and_mixed_inputs():
    """The mode is what makes the tests above able to fail."""
    with DeviceDiscipline("meta") as mode:
        torch.randn(3, device="meta", generator=torch.Generator().manual_seed(0))
        torch.randn(3)
        torch.zeros(3, device="meta") + torch.zeros(())
    assert mode.faults == ["randn: generator on cpu, output on ['meta']", "randn: drawn on ['cpu'], the model is on meta",
                           "add: inputs on ['cpu', 'meta'], output on ['meta']"]


class ReadBacks(TorchFunctionMode):
    """Counts the values calibration's own code reads back from tensors (each one, on a GPU, makes the host
    wait for the device)."""

    NAMES = {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import sys

        if getattr(func, "__name__", "") in self.NAMES and "/calibration/" in sys._getframe(1).f_code.co_filename:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_training_reads_its_losses_back_once_every_log_every_steps_and_learns_the_same():
    """No per-step host sync: the losses wait on the device and come back together; the run is the same."""
    from dataclasses import replace

    from calibration.data import SubjectData
    from calibration.trainer import TrainConfig, train

    rng = np.random.default_rng(4)
    data = SubjectData("a", rng.normal(size=(40, 30)).astype(np.float32), [f"i{i}" for i in range(40)],
                       rng.normal(size=(40, 4, 8)).astype(np.float32))

    def run(config: TrainConfig) -> tuple[dict, int, list[int]]:
        torch.manual_seed(0)
        model = MindEye2(MindEye2Config(subjects=["a"], voxels=[30], hidden=16, n_blocks=2, clip_tokens=4, clip_dim=8,
                                        blurry=False, prior_depth=1, prior_dim_head=4))
        seen: list[int] = []
        with ReadBacks() as reads:
            history = train(model, [data], config, progress=lambda step, total, loss: seen.append(step))
        return history, reads.count, seen

    config = TrainConfig(epochs=3, batch_size=8, checkpoint_s=1e9, mixup_pct=0.5)
    every, reads_every, seen_every = run(config)
    grouped, reads_grouped, seen_grouped = run(replace(config, log_every=4))
    # One read of the temperature schedule at the start; then a CPU reads back each step (it costs nothing there).
    assert every["steps"] == 15 and reads_every == 1 + 15
    assert reads_grouped == 1 + 4  # steps 4, 8, 12 and the last
    assert seen_grouped == seen_every == list(range(1, 16))  # every step still reaches the progress line
    for key in ("loss", "clip", "prior", "blurry"):
        assert grouped[key] == every[key]
