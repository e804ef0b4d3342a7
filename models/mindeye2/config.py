"""MindEye2 configuration: a small dataclass saved as config.json beside the weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.jsonconfig import JsonConfig


@dataclass
class MindEye2Config(JsonConfig):
    """Sizes of a MindEye2 model. Defaults are the published 4096-hidden model with the blurry branch.

    ``subjects`` names the ridge inputs in order (``ridge.linears.i`` maps ``subjects[i]``) and
    ``voxels`` gives each one's voxel count.
    """

    subjects: list[str] = field(default_factory=lambda: ["subj01"])
    voxels: list[int] = field(default_factory=lambda: [15724])
    hidden: int = 4096
    n_blocks: int = 4
    seq_len: int = 1
    clip_tokens: int = 256
    clip_dim: int = 1664
    blurry: bool = True
    drop: float = 0.15
    blurry_channels: tuple[int, int, int] = (32, 64, 128)  # the blurry branch's diffusers Decoder widths
    prior_depth: int = 6
    prior_dim_head: int = 52
    prior_timesteps: int = 100

    def __post_init__(self) -> None:
        if len(self.subjects) != len(self.voxels):
            raise ValueError(f"MindEye2Config: {len(self.subjects)} subjects but {len(self.voxels)} voxel counts")
        self.blurry_channels = tuple(self.blurry_channels)

    @property
    def prior_heads(self) -> int:
        return self.clip_dim // self.prior_dim_head

    def subject_index(self, subject: str) -> int:
        try:
            return self.subjects.index(subject)
        except ValueError:
            raise KeyError(f"subject {subject!r} has no ridge in this model; it has {self.subjects}") from None


def standin_config(subjects: list[str], voxels: list[int], hidden: int = 128, blurry: bool = False) -> MindEye2Config:
    """A CPU-sized MindEye2 in the stand-in token space (16 tokens x 64), with the published-size blurry
    branch only when asked (it needs SD VAE targets)."""
    from models.standin import StandInConfig

    c = StandInConfig()
    return MindEye2Config(subjects=list(subjects), voxels=list(voxels), hidden=hidden, n_blocks=2,
                          clip_tokens=c.tokens, clip_dim=c.dim, blurry=blurry, prior_depth=1, prior_dim_head=16)
