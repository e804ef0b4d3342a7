"""MindEye2 networks, compatible with the published checkpoints' key names and shapes."""

from models.mindeye2.backbone import BrainNetwork
from models.mindeye2.config import MindEye2Config
from models.mindeye2.ridge import RidgeRegression

__all__ = ["BrainNetwork", "MindEye2Config", "RidgeRegression"]
