"""Captions from brain tokens: MindEye2's bigG -> CLIP-L converter and GIT-large-COCO (docs/models.md)."""

from models.caption.captioner import BrainCaptioner, load_git
from models.caption.converter import (
    BigGToL,
    ConverterConfig,
    convert_bigg_to_l,
    load_converter,
    load_published_converter,
    save_converter,
)

__all__ = ["BigGToL", "BrainCaptioner", "ConverterConfig", "convert_bigg_to_l", "load_converter", "load_git",
           "load_published_converter", "save_converter"]
