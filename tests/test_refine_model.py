"""Refinement (models.refine): a tiny SDXL in the diffusers layout, loaded as SDXL base is, refined with
MindEye2's settings - the last 12 of 25 Euler steps on its timestep grid, guidance 5 against its negative
prompt, the caption as the prompt - then blended 0.75 / 0.25 with the blurry reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.refine import Refiner, RefineSettings
from models.refine.refiner import blend, to_square
from models.refine.tiny import write_tiny_refiner, write_tiny_single_file

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def refiner(tmp_path_factory) -> Refiner:
    return Refiner.from_folder(write_tiny_refiner(tmp_path_factory.mktemp("sdxl"), seed=0, size=SIZE))


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)


def mindeye2_timesteps(steps: int = 25, last: int = 12) -> list[int]:
    """sgm's LegacyDDPMDiscretization as MindEye2 samples it: linspace(999, 0, steps, endpoint=False) rounded
    down, descending; img2img_timepoint = last + 1 sigmas, the final one zero, so ``last`` steps run."""
    grid = np.linspace(999, 0, steps, endpoint=False).astype(int)  # already descending
    return [int(t) for t in grid[-last:]]


def test_refinement_runs_mindeye2s_last_12_of_25_steps_with_guidance_5(refiner: Refiner):
    image, blurry = _images()
    seen: list[tuple[int, float]] = []

    def hook(module, args, kwargs):
        seen.append((int(args[0].shape[0]), float(args[1].flatten()[0])))

    handle = refiner.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = refiner.refine(image, "a red bus parked on a street", blurry, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert [t for _, t in seen] == mindeye2_timesteps()  # 12 UNet passes, on MindEye2's grid
    assert {batch for batch, _ in seen} == {2}  # conditional and unconditional: guidance on
    assert refiner.pipe.guidance_scale == 5.0 and RefineSettings().steps == 25
    assert RefineSettings().negative_prompt.startswith("painting, extra fingers")


def test_the_refined_image_is_blended_075_025_with_the_blurry_one(refiner: Refiner):
    image, blurry = _images(1)
    alone = refiner.refine(image, "two dogs on the grass", None, torch.Generator().manual_seed(3))
    mixed = refiner.refine(image, "two dogs on the grass", blurry, torch.Generator().manual_seed(3))
    low = to_square(blurry, SIZE, torch.device("cpu"))[0].permute(1, 2, 0).numpy() * 255.0
    expected = 0.75 * alone.astype(float) + 0.25 * low
    assert np.abs(mixed.astype(float) - expected).max() <= 1.0  # the refined picture rounded once more
    assert np.abs(mixed.astype(float) - alone).mean() > 5.0


def test_the_caption_steers_the_refinement_and_a_seed_repeats_it(refiner: Refiner):
    image, _ = _images(2)
    a = refiner.refine(image, "a cat on a table", None, torch.Generator().manual_seed(5))
    b = refiner.refine(image, "a cat on a table", None, torch.Generator().manual_seed(5))
    c = refiner.refine(image, "a boat on the water", None, torch.Generator().manual_seed(5))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_input_is_refused_with_what_was_expected(refiner: Refiner):
    image, _ = _images()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"image must be a uint8 \(H, W, 3\) array, got float64 \(40, 56, 3\)"):
        refiner.refine(image.astype(float), "x", None, gen)
    with pytest.raises(ValueError, match=r"blurry must be a uint8 \(H, W, 3\) array, got uint8 \(40, 56\)"):
        refiner.refine(image, "x", image[..., 0], gen)
    with pytest.raises(ValueError, match="generator must be on the refiner's device cpu, got int"):
        refiner.refine(image, "x", None, 0)
    with pytest.raises(ValueError, match="last_steps must be in 1..steps"):
        RefineSettings(last_steps=26)


def test_a_folder_that_is_not_the_diffusers_layout_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"model_index\.json is missing"):
        Refiner.from_folder(tmp_path)
    with pytest.raises(ValueError, match=r"sd_xl_base_1\.0\.ckpt: expected a \.safetensors single file"):
        Refiner.from_single_file(tmp_path / "sd_xl_base_1.0.ckpt", config=tmp_path)


def test_the_published_single_file_layout_loads_as_the_folder_does(tmp_path: Path, refiner: Refiner):
    """SDXL's single file (sgm names: model.diffusion_model, first_stage_model, both conditioner embedders)
    with the diffusers layout's configurations beside it, as ``rtdecode models download sdxl-base`` leaves
    it: the same weights and the same refined picture as the diffusers folder of the same seed."""
    import shutil

    folder = write_tiny_refiner(tmp_path / "folder", seed=0, size=SIZE)
    downloaded = tmp_path / "sdxl-base"
    shutil.copytree(folder, downloaded, ignore=shutil.ignore_patterns("*.safetensors"))
    single = write_tiny_single_file(downloaded / "sd_xl_base_1.0.safetensors", seed=0)
    loaded = Refiner.from_folder(downloaded)  # no UNet weights in unet/: the single file is read
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(loaded.pipe, name).state_dict(), getattr(refiner.pipe, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    image, blurry = _images(4)
    assert np.array_equal(loaded.refine(image, "a kite", blurry, torch.Generator().manual_seed(1)),
                          refiner.refine(image, "a kite", blurry, torch.Generator().manual_seed(1)))
    from safetensors.torch import load_file, save_file

    state = load_file(str(single))
    del state["first_stage_model.decoder.conv_out.bias"]
    save_file(state, str(single))
    with pytest.raises(ValueError, match=r"sd_xl_base_1\.0\.safetensors: a weight the configurations in .* need "
                                         r"is missing from the file"):
        Refiner.from_single_file(single, config=downloaded)
    state["first_stage_model.decoder.conv_out.bias"] = torch.zeros(3)
    del state["conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"]
    save_file(state, str(single))
    with pytest.raises(ValueError, match=r"no weights for text_encoder \(1 missing, e\.g\. .*final_layer_norm\.bias\)"):
        Refiner.from_single_file(single, config=downloaded)
    save_file({k: v for k, v in state.items() if not k.startswith("conditioner.embedders.1.")}, str(single))
    with pytest.raises(ValueError, match=r"sd_xl_base_1\.0\.safetensors: the OpenCLIP bigG text encoder is missing"):
        Refiner.from_single_file(single, config=downloaded)


def test_the_refiners_own_steps_keep_to_its_device_on_meta():
    """The init image's crossing and the blend, on the meta device under the check that fails any op mixing
    devices. diffusers' pipeline itself reads values (image.min()), which meta tensors do not hold; it gets
    the init image and the generator on the UNet's device."""
    from test_device_discipline import DeviceDiscipline

    image, blurry = _images(3)
    meta = torch.device("meta")
    with DeviceDiscipline("meta") as mode:
        out = blend(to_square(image, SIZE, meta), to_square(blurry, SIZE, meta), 0.75)
    assert mode.faults == []
    assert out.device == meta and out.shape == (SIZE, SIZE, 3) and out.dtype == torch.uint8
