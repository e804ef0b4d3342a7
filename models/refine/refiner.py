"""Refinement as MindEye2 does it (``src/enhanced_recon_inference.ipynb`` and ``final_evaluations.ipynb``):
SDXL img2img from the unCLIP reconstruction upscaled to 768 px, prompted with the predicted caption, then
0.75 x refined + 0.25 x the blurry reconstruction.

MindEye2's numbers, each from its code: 25 Euler steps of which the last 12 run (``img2img_timepoint =
13`` sigmas, the last one zero; strength 12/25 here), classifier-free guidance 5 against its fixed
negative prompt, SDXL's size conditioning with original size 768 x 768, crop (0, 0) and target size
1024 x 1024, one sample, and the blend in [0, 1]. Its sampler (sgm's EulerEDMSampler, gamma 0, over
LegacyDDPMDiscretization) takes the timesteps ``linspace(999, 0, 25, endpoint=False)`` rounded down: the
same as diffusers' EulerDiscreteScheduler with ``timestep_spacing="trailing"``, which is set here.

MindEye2's notebook loads a community SDXL fine-tune (``zavychromaxl_v30.safetensors``; the SDXL base path
is commented out beside it); this refiner loads any SDXL checkpoint, SDXL base 1.0 by default (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.caption.converter import same_device
from models.devices import to_device
from models.jsonconfig import JsonConfig

NEGATIVE = ("painting, extra fingers, mutated hands, poorly drawn hands, poorly drawn face, deformed, ugly, "
            "blurry, bad anatomy, bad proportions, extra limbs, cloned face, skinny, glitchy, double torso, "
            "extra arms, extra hands, mangled fingers, missing lips, ugly face, distorted face, extra legs, anime")
SETTINGS = "rtdecode_refine.json"  # optional, beside the diffusers layout: a tiny model's own sizes


@dataclass(frozen=True)
class RefineSettings(JsonConfig):
    """MindEye2's settings by default."""

    steps: int = 25
    last_steps: int = 12  # of ``steps``: the ones that run
    guidance: float = 5.0
    size: int = 768  # the reconstruction is upscaled to size x size; the refined image comes out at it
    original_size: int = 768
    target_size: int = 1024
    refined_weight: float = 0.75  # final = w x refined + (1 - w) x blurry
    negative_prompt: str = NEGATIVE

    def __post_init__(self) -> None:
        if not 0 < self.last_steps <= self.steps:
            raise ValueError(f"RefineSettings: last_steps must be in 1..steps ({self.steps}), got {self.last_steps}")
        if not 0.0 <= self.refined_weight <= 1.0:
            raise ValueError(f"RefineSettings: refined_weight must be in [0, 1], got {self.refined_weight}")

    @property
    def strength(self) -> float:
        """diffusers runs the last int(steps x strength) steps; the half step keeps float rounding out of it."""
        return min(1.0, (self.last_steps + 0.5) / self.steps)


def _image(array: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"refine: {name} must be a uint8 (H, W, 3) array, got {got}")
    return array


def to_square(array: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) on the host -> (1, 3, size, size) float32 in [0, 1] on ``device`` (bilinear, antialiased,
    as torchvision's Resize on a tensor)."""
    x = to_device(array, device).permute(2, 0, 1)[None].float() / 255.0
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).clamp(0, 1)


def blend(refined: torch.Tensor, blurry: torch.Tensor | None, weight: float) -> torch.Tensor:
    """``weight`` x refined + (1 - weight) x blurry, both (1, 3, S, S) in [0, 1] -> uint8 (S, S, 3) on their
    device (MindEye2 blends in [0, 1], before any rounding)."""
    out = refined if blurry is None else weight * refined + (1.0 - weight) * blurry
    return (out[0].clamp(0, 1).permute(1, 2, 0) * 255.0).round().to(torch.uint8)


class Refiner:
    """SDXL img2img (diffusers' StableDiffusionXLImg2ImgPipeline) with MindEye2's settings."""

    def __init__(self, pipe, settings: RefineSettings | None = None) -> None:
        from diffusers import EulerDiscreteScheduler

        self.settings = settings or RefineSettings()
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    settings: RefineSettings | None = None) -> Refiner:
        """SDXL base in the diffusers layout (``model_index.json``, unet/, vae/, text_encoder/, text_encoder_2/,
        tokenizer/, tokenizer_2/, scheduler/), safetensors weights only; or that layout's configurations
        beside one single ``.safetensors`` file (what ``rtdecode models download sdxl-base`` writes)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path}: model_index.json is missing; expected SDXL in the diffusers layout")
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1 and not any((path / "unet").glob("*.safetensors")):
            return cls.from_single_file(singles[0], path, device=device, dtype=dtype, settings=settings)
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            str(path), dtype=dtype or torch.float32, use_safetensors=True, local_files_only=True)
        return cls(pipe.to(device), settings or _settings(path))

    @classmethod
    def from_single_file(cls, path: str | Path, config: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None, settings: RefineSettings | None = None) -> Refiner:
        """The published single file (``sd_xl_base_1.0.safetensors``) with the diffusers layout's configs and
        tokenizers from ``config`` (no weights needed there; nothing is fetched)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a .safetensors single file (a pickled .ckpt is not read)")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SDXL single file not found (rtdecode models download sdxl-base)")
        _check_single_file(path)
        try:  # no dtype here: a cast inside diffusers fails on an empty weight before it can be named below
            pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(str(path), config=str(config),
                                                                     local_files_only=True)
        except NotImplementedError as exc:  # diffusers moving a weight the file lacks ("Cannot copy out of meta")
            raise ValueError(f"{path}: a weight the configurations in {config} need is missing from the file "
                             f"({' '.join(str(exc).split())[:120]})") from None
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            # diffusers leaves a weight the file lacks empty (on the meta device) rather than refusing it
            empty = [k for k, t in getattr(pipe, name).state_dict().items() if t.is_meta]
            if empty:
                raise ValueError(f"{path}: no weights for {name} ({len(empty)} missing, e.g. {empty[0]}); "
                                 f"not SDXL of the configurations in {config}")
        return cls(pipe.to(device, dtype or torch.float32), settings or _settings(Path(config)))

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @torch.no_grad()
    def refine(self, image: np.ndarray, caption: str, blurry: np.ndarray | None,
               generator: torch.Generator) -> np.ndarray:
        """The refined reconstruction, uint8 (size, size, 3): SDXL img2img from ``image`` prompted with
        ``caption``, blended with ``blurry`` (when given) as MindEye2 does."""
        s = self.settings
        _image(image, "image")
        if blurry is not None:
            _image(blurry, "blurry")
        if not isinstance(caption, str):
            raise ValueError(f"refine: caption must be a string, got {type(caption).__name__}")
        if not isinstance(generator, torch.Generator) or not same_device(generator.device, self.device):
            where = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
            raise ValueError(f"refine: the generator must be on the refiner's device {self.device}, got {where}")
        init = to_square(image, s.size, self.device)
        sizes = {"original_size": (s.original_size,) * 2, "target_size": (s.target_size,) * 2,
                 "negative_original_size": (s.original_size,) * 2, "negative_target_size": (s.target_size,) * 2}
        refined = self.pipe(prompt=caption, negative_prompt=s.negative_prompt, image=init, strength=s.strength,
                            num_inference_steps=s.steps, guidance_scale=s.guidance, generator=generator,
                            output_type="pt", **sizes).images
        low = None if blurry is None else to_square(blurry, s.size, self.device)
        return blend(refined.float(), low, s.refined_weight).cpu().numpy()


SINGLE_FILE_PARTS = {"model.diffusion_model.": "the UNet", "first_stage_model.": "the VAE",
                     "conditioner.embedders.0.transformer.": "the CLIP ViT-L text encoder",
                     "conditioner.embedders.1.model.": "the OpenCLIP bigG text encoder"}


def _check_single_file(path: Path) -> None:
    """SDXL base's single file holds four parts under these prefixes; a file without one of them (another
    model's checkpoint) is refused by name before diffusers guesses at it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    for prefix, part in SINGLE_FILE_PARTS.items():
        if not any(k.startswith(prefix) for k in keys):
            raise ValueError(f"{path}: {part} is missing (no {prefix}* keys); expected SDXL's single-file layout")


def _settings(folder: Path) -> RefineSettings:
    path = folder / SETTINGS
    return RefineSettings.from_json(path) if path.is_file() else RefineSettings()
