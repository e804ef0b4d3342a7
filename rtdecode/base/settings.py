"""Session settings: one dataclass per section of the session's TOML file, each field with its default.

Only the shapes and defaults; reading, checking and writing the TOML file is rtdecode.base.config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rtdecode.base.threads import ThreadsSection


@dataclass
class SessionSection:
    """Where the session folder goes and who it is for (BIDS labels: letters and digits only)."""

    root: Path = Path("sessions")
    subject: str = "01"
    session: str = "01"
    task: str = "rt"
    bids: bool = True  # each finished run also written as BIDS (docs/session-folder.md), in the background
    stimuli: Path | None = None  # folder of the shown images: each run's BIDS copy takes them into stimuli/
    # Free space (docs/session-folder.md): a warning at start, in `config check` and every space_check_every
    # volumes (0: at start only) when the session folder's disk has less than min_free_gb, or less than 2.5
    # times a run's raw volumes once a volume's size is known.
    min_free_gb: float = 2.0
    space_check_every: int = 20


@dataclass
class ScannerSection:
    """How volumes arrive from the scanner."""

    watch_dir: Path = Path("incoming")
    # Placeholders: {run} (series number) and {volume} (0-based index), with optional :06d widths.
    pattern: str = "001_{run:06d}_{volume:06d}.dcm"
    format: Literal["auto", "dicom", "nifti"] = "auto"
    mode: Literal["events", "polling"] = "events"
    poll_interval_s: float = 0.1
    tr_s: float = 1.5
    volumes_per_run: int = 192
    settle_s: float = 0.02
    partial_timeout_s: float = 2.0
    missing_timeout_s: float = 3.0
    quarantine_dir: Path | None = None
    # Exports written one file per slice (Philips / GE per-slice, Siemens non-mosaic): the slices that
    # make one volume (0: one file per volume). The pattern then needs {slice} or {instance}; a slice's
    # volume comes from its header: TemporalPositionIdentifier, else InstanceNumber counted in slices
    # ("auto"), or the one field named here.
    slices_per_volume: int = 0
    slice_grouping: Literal["auto", "temporal_position", "acquisition_number", "instance_number"] = "auto"


@dataclass
class PreprocessSection:
    """Motion correction, registration and masking."""

    reference_volume: int = 0
    session_reference: Path | None = None
    mask: Path | None = None
    mask_threshold: float = 0.3
    fd_threshold_mm: float = 0.5
    max_iterations: int = 12
    sample_stride: int = 2
    save_resampled: bool = False
    # The alignment check at run start (rtdecode/preprocess/alignment.py): outside these, the console warns.
    alignment_max_shift_mm: float = 10.0
    alignment_max_rotation_deg: float = 10.0
    alignment_min_in_brain: float = 0.9
    alignment_min_match: float = 0.5
    alignment_min_voxels: int = 100
    tsnr_map_every: int = 20  # volumes between temporal-SNR mosaics sent to the console (0: none)


@dataclass
class NetworkSection:
    """ZeroMQ addresses and their protection.

    ``host`` is where the events and control sockets bind: 127.0.0.1 unless a console or display on
    another host connects. Any address reachable from other hosts needs CURVE (``curve_secret`` with
    ``curve_allowed`` for the sockets served here, ``curve_decoder_key`` for the betas sent to a decoder
    elsewhere); plain TCP off the host is refused unless ``allow_plaintext = true`` says so on purpose.
    """

    host: str = "127.0.0.1"
    events_port: int = 5555  # QA and run events to consoles and displays; 0: any free port; -1: off
    betas_port: int = 5556
    results_port: int = 5557
    control_port: int = 5558  # operator commands from the console (start_run, stop_run); -1: off
    # The decoder's betas address, e.g. "tcp://127.0.0.1:5556"; empty: betas are only published.
    decoder: str = ""
    resend_s: float = 2.0  # unacknowledged betas are sent again after this long
    drain_s: float = 10.0  # on stop, wait up to this long for the decoder to acknowledge the last betas
    # CURVE (keys made by `rtdecode keys`): this host's secret key; the folder of public keys allowed to
    # connect to the events and control sockets (console, display); the decoder's public key.
    curve_secret: Path | None = None
    curve_allowed: Path | None = None
    curve_decoder_key: Path | None = None
    allow_plaintext: bool = False  # true: bind or connect off the host without CURVE (a lab that chose so)
    max_message_mb: float = 16.0  # larger frames are refused by every socket before they are buffered


@dataclass
class ModelsSection:
    """Calibrated model folder for the decoder (not needed by the scanner side)."""

    folder: Path | None = None


@dataclass
class GLMSection:
    """Single-trial betas. Names follow nilearn's FirstLevelModel; defaults are Real-time MindEye's."""

    enabled: bool = True
    # Each run's events table (onset, duration, image). Placeholders: {run} (1-based run number in the
    # session) and {series} (scanner series number). Empty: no betas, volumes only.
    events: Path | None = None
    noise_model: Literal["ar1", "ols"] = "ar1"
    hrf_model: Literal["glover"] = "glover"
    drift_model: Literal["cosine"] = "cosine"
    high_pass: float = 0.01
    delay_s: float = 7.5  # a trial is estimated once the volume at onset + delay_s has arrived
    motion_confounds: bool = True
    motion_min_frames: int = 60  # motion confounds only once the fit has this many volumes (0: always)
    zscore: Literal["running", "calibration", "none"] = "running"
    zscore_stats: Path | None = None  # folder with zscore_mean.npy and zscore_std.npy (zscore = "calibration")
    average_repeats: bool = False  # send the mean over all presentations of an image so far
    # Beyond Real-time MindEye (docs/glm.md). The calibration hour's GLM tuning (glm_tuning.npz, made by
    # `rtdecode calibrate --glm-tune` or `rtdecode glm-tune`) is read from `tuning` (the model folder).
    hrf: Literal["glover", "library"] = "glover"  # library: each voxel's HRF from the tuning
    denoise: str = "off"  # "off", "auto" (the tuning's count) or a number of noise components, 1 to 10
    denoise_min_frames: int = 30  # components only once this many volumes are in the fit (regress)
    # "subtract": the calibration hour's noise removed from every volume, its count chosen for delay_s;
    # "regress": the current run's components as confounds in every fit (issue 20; costs the fast tier)
    denoise_mode: Literal["subtract", "regress"] = "subtract"
    tuning: Path | None = None
    refine: bool = False  # each trial re-estimated at every volume from first_delay_s to final_delay_s (rtX.X)
    first_delay_s: float = 4.5
    final_delay_s: float = 15.0


@dataclass
class SessionConfig:
    """Every setting one session needs."""

    session: SessionSection = field(default_factory=SessionSection)
    scanner: ScannerSection = field(default_factory=ScannerSection)
    preprocess: PreprocessSection = field(default_factory=PreprocessSection)
    glm: GLMSection = field(default_factory=GLMSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    threads: ThreadsSection = field(default_factory=ThreadsSection)  # per process (rtdecode/base/threads.py)

    @property
    def session_dir(self) -> Path:
        return self.session.root / f"sub-{self.session.subject}" / f"ses-{self.session.session}"
