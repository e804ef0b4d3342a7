"""Refined reconstructions: SDXL img2img prompted with the caption, as MindEye2 refines (docs/models.md)."""

from models.refine.refiner import NEGATIVE, Refiner, RefineSettings

__all__ = ["NEGATIVE", "RefineSettings", "Refiner"]
