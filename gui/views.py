"""What the console shows of a session, as plain data: log lines, trial rows, each run's alignment.
No Qt here (gui.state builds them from messages; gui.panels draws them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtdecode.wire.schema import refine_delay


@dataclass(frozen=True)
class LogEntry:
    time: float
    severity: str  # info, warning or error
    text: str


LIVE = ("realtime", "refine")  # the rows that show a trial's live estimate


def trial_key(run: int, trial: int, version: str) -> tuple[int, int, str]:
    """Where a result lives: every refinement of a trial shares one row ('refine'), which shows the newest."""
    return (run, trial, "refine" if refine_delay(version) is not None else version)


@dataclass
class TrialView:
    run: int
    trial: int
    image: str = ""  # the stimulus shown, when the events table names it
    version: str = "realtime"
    top_ids: list[str] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    reconstruction: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    bad: bool = False
    note: str = ""
    tier: str = ""  # what drew the reconstruction: unclip, blurry, standin
    received: float | None = None  # wall time of the newest result
    onset_s: float | None = None
    eval_metric: str = ""  # a score from rtdecode evaluate, when a replay carries one
    eval_score: float | None = None
    recon_version: str = ""  # the version the reconstruction shown was drawn from (refining: may lag)
    final_delay_s: float | None = None  # refining: the delay of a trial's last version, when the run said
    caption: str = ""  # what the decoder's captioner said of the trial (from the brain, not the stimulus)
    refined: bool = False  # the picture shown is the refined one (stage 'refined': SDXL with the caption)
    caption_score: float | None = None  # the caption's METEOR from rtdecode evaluate, when a replay carries it

    @property
    def delay_s(self) -> float | None:
        """Seconds after onset of the version shown (refinements only)."""
        return refine_delay(self.version)

    @property
    def hit(self) -> bool | None:
        return None if not self.top_ids or not self.image else self.top_ids[0] == self.image

    @property
    def latency_ms(self) -> float | None:
        return sum(self.timings_ms.values()) if self.timings_ms else None


@dataclass
class AlignmentView:
    """Where the run's mask landed (sent at run start): figures, the scanner side's warning, the mosaic."""

    run: int
    figures: dict[str, float] = field(default_factory=dict)  # shift_mm, rotation_deg, in_brain, match
    warning: str = ""
    mosaic: np.ndarray | None = None
    tsnr: np.ndarray | None = None  # the latest temporal-SNR mosaic of the run
    tsnr_at: int = 0  # the volume it was made at
    median_tsnr: float | None = None
    registered_to: str = ""  # what the run was registered to ("": not registered; its figures say no shift)
