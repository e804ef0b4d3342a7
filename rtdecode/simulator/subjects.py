"""Simulated subjects: voxel responses generated from a latent representation shared across people.

The model (see docs/simulated-brain.md):
- every image has stand-in tokens (models.standin) and a shared latent ``z``: the image's first
  ``latent_dim`` principal components of those tokens over the built-in set, whitened;
- a subject owns a visual region of the MNI brain (occipital, chosen by a subject-specific smooth
  field, so subjects differ in voxel count and location) and spatially smooth response maps
  (random Fourier features of the voxel position, a different draw per subject: the same latent
  lands on different voxels in different people);
- voxel response to an image = mean evoked response + image-specific part, where the image-specific
  part mixes the shared latent (linearly, through the subject's maps) with a subject-specific
  nonlinear function of it (what a shared model cannot transfer);
- a voxel's single-trial reliability is the correlation, across trials, between its estimated and its
  true response; it varies across voxels around the configured median.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.stats import norm

from models.standin import StandInConfig, StandInEmbedder
from rtdecode.base.cache import cached_arrays
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.simulator.hrf import DISPERSION, GLOVER, PEAK_S, RATIO, UNDERSHOOT_S, HrfShape
from rtdecode.simulator.phantom import mni_template

NSD_RELIABILITY = 0.3  # median single-trial correlation with the true response (NSD-like: noisy)


@dataclass(frozen=True)
class Physiology:
    """Spreads of HRF timing and the share of structured noise (sources: docs/simulated-brain.md).

    Fixed before any GLM change was measured against them (issue 20); do not tune to results.
    """

    person_peak_sd_s: float = 0.0  # between people: sd of the HRF delay (Aguirre 1998, Handwerker 2004)
    voxel_peak_sd_s: float = 0.0  # within a person, between voxels (smooth over ~6 mm)
    undershoot_sd_s: float = 0.0  # undershoot delay beyond the peak's shift
    dispersion_sd: float = 0.0  # log-normal spread of the gammas' dispersion
    ratio_sd: float = 0.0  # log-normal spread of the undershoot ratio
    structured_share: float = 0.0  # share of head-frame noise variance in shared slow components
    structured_components: int = 0
    structured_rho: float = 0.9  # lag-1 autocorrelation of each component at TR 1.5 s (slow: < 0.1 Hz)
    # Voxels over draining veins: later and wider responses, in patches (issue 32's "venous" voxels).
    venous_share: float = 0.0  # share of voxels (the top of a smooth field over ~4 mm)
    venous_delay_s: float = 0.0  # added to such a voxel's delay (and its undershoot's)
    venous_dispersion: float = 1.0  # its dispersion is multiplied by this


PHYSIOLOGY = {
    "canonical": Physiology(),
    "varied": Physiology(person_peak_sd_s=0.8, voxel_peak_sd_s=0.6, undershoot_sd_s=1.0, dispersion_sd=0.1,
                         ratio_sd=0.3, structured_share=0.4, structured_components=6),
    # "varied" plus late venous patches (Siero et al. 2011: responses over pial veins peak ~1-2 s later).
    "venous": Physiology(person_peak_sd_s=0.8, voxel_peak_sd_s=0.6, undershoot_sd_s=1.0, dispersion_sd=0.1,
                         ratio_sd=0.3, structured_share=0.4, structured_components=6, venous_share=0.15,
                         venous_delay_s=1.5, venous_dispersion=1.3),
}


@dataclass(frozen=True)
class SubjectSpec:
    """What defines a simulated subject; everything else is drawn from ``seed``."""

    name: str = "sim01"
    n_voxels: int = 2000
    seed: int = 1
    reliability: float = NSD_RELIABILITY
    latent_dim: int = 48
    specific_fraction: float = 0.3  # share of image-specific variance that is subject-specific
    evoked_pct: float = 1.0  # mean evoked response, % signal change
    signal_pct: float = 0.8  # sd of the image-specific response across images, % signal change
    map_scale_mm: float = 8.0  # spatial scale of the response maps
    # "canonical": the Glover HRF in every voxel and noise without shared slow components (round 1);
    # "varied": person- and voxel-specific HRF timing and shared slow noise components (see PHYSIOLOGY).
    physiology: str = "canonical"
    # 0: responses driven by each image's own latent (the code every person shares); k > 0: by the latent
    # of another image, under a seeded permutation k of the set, so this person shares no code with the
    # others (the claim's control for transfer between people: docs/calibration.md).
    scramble: int = 0

    def __post_init__(self) -> None:
        if self.physiology not in PHYSIOLOGY:
            raise ValueError(f"SubjectSpec.physiology must be one of {sorted(PHYSIOLOGY)}, got {self.physiology!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def person(self) -> str:
        """Whose brain: the seed draws every map, so two specs with one seed are one person (whatever
        their names or voxel counts)."""
        return f"simulated:seed={self.seed}"

    def code_of(self, indices, n_images: int) -> np.ndarray:
        """The images whose latents drive this person's responses to images ``indices`` (themselves, or
        a seeded permutation's images under ``scramble``)."""
        indices = np.asarray(indices, int)
        if self.scramble == 0:
            return indices
        return np.random.default_rng([self.scramble, 303]).permutation(n_images)[indices]


class LatentSpace:
    """The shared latent: whitened principal components of stand-in tokens over the built-in images."""

    def __init__(self, embedder: StandInEmbedder | None = None, stimuli: StimulusSet | None = None,
                 dim: int = 48, basis_images: int = 240) -> None:
        self.embedder = embedder or StandInEmbedder()
        self.stimuli = stimuli or StimulusSet()
        self.mean, self.components = _pca_basis(self.embedder.config, self.stimuli, basis_images)
        if dim > self.components.shape[0]:
            raise ValueError(f"latent_dim {dim} exceeds the {self.components.shape[0]} components available")
        self.dim = dim
        self._tokens: dict[int, np.ndarray] = {}

    def from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        flat = np.asarray(tokens, np.float32).reshape(len(tokens), -1)
        return (flat - self.mean) @ self.components[: self.dim].T

    def of_images(self, indices) -> np.ndarray:
        return self.from_tokens(self.tokens(indices))

    def tokens(self, indices) -> np.ndarray:
        """Stand-in tokens of images by index, each painted and embedded once per LatentSpace (sessions
        of a dataset show the same images again: painting dominated writing a dataset)."""
        indices = [int(i) for i in indices]
        todo = sorted({i for i in indices if i not in self._tokens})
        if todo:
            for i, t in zip(todo, self.embedder.embed(self.stimuli.images(todo)), strict=True):
                self._tokens[i] = t
        if not indices:
            return np.zeros((0, self.embedder.config.tokens, self.embedder.config.dim), np.float32)
        return np.stack([self._tokens[i] for i in indices])


@lru_cache(maxsize=4)
def _pca_basis(config: StandInConfig, stimuli: StimulusSet, n: int) -> tuple[np.ndarray, np.ndarray]:
    def build() -> tuple[np.ndarray, np.ndarray]:
        tokens = StandInEmbedder(config).embed(stimuli.images(range(min(n, stimuli.n))))
        flat = tokens.reshape(len(tokens), -1)
        mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        scale = s / np.sqrt(len(flat) - 1)
        keep = scale > scale[0] * 1e-4
        return mean.astype(np.float32), (vt[keep] / scale[keep, None]).astype(np.float32)

    mean, components = cached_arrays("latent-basis", f"{config}|{stimuli}|{n}|v1", build)
    return mean, components


class SimulatedSubject:
    """A subject's voxels (MNI mm), response maps and per-voxel reliability."""

    def __init__(self, spec: SubjectSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 101])
        self._roi_field = _FourierField(rng, 1, scale_mm=15.0)
        self._shared = _FourierField(rng, spec.latent_dim, scale_mm=spec.map_scale_mm)
        self._specific = _FourierField(rng, spec.latent_dim, scale_mm=spec.map_scale_mm)
        self._param_field = _FourierField(rng, 2, scale_mm=4.0)
        # Drawn from their own stream, so the canonical subjects of round 1 are unchanged.
        hrng = np.random.default_rng([spec.seed, 202])
        self._hrf_field = _FourierField(hrng, 4, scale_mm=6.0)
        self._person_peak = float(hrng.normal())
        self._noise_field = _FourierField(hrng, max(self.physiology.structured_components, 1), scale_mm=20.0)
        self._vein_field = _FourierField(np.random.default_rng([spec.seed, 303]), 1, scale_mm=4.0)  # own stream
        self._specific_proj = rng.normal(0, 2 / np.sqrt(spec.latent_dim), (spec.latent_dim, spec.latent_dim))
        self._specific_phase = rng.uniform(0, 2 * np.pi, spec.latent_dim)
        candidates = _candidate_voxels()
        field = self._roi_field(candidates)[:, 0]
        if spec.n_voxels > len(candidates):
            raise ValueError(f"SubjectSpec.n_voxels: at most {len(candidates)} visual voxels at 2 mm, got {spec.n_voxels}")
        order = np.argsort(-field, kind="stable")[: spec.n_voxels]
        self.roi_threshold = float(field[order[-1]])
        self.xyz = candidates[np.sort(order)]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_voxels(self) -> int:
        return len(self.xyz)

    @property
    def physiology(self) -> Physiology:
        return PHYSIOLOGY[self.spec.physiology]

    def hrf(self, xyz: np.ndarray) -> HrfShape:
        """Each position's HRF: the Glover shape, shifted per person and per voxel under "varied"."""
        p = self.physiology
        if p.person_peak_sd_s == 0 and p.voxel_peak_sd_s == 0:
            return GLOVER
        f = self._hrf_field(xyz)  # unit-variance smooth fields
        peak = np.clip(PEAK_S + p.person_peak_sd_s * self._person_peak + p.voxel_peak_sd_s * f[:, 0], 3.5, 10.0)
        under = peak + (UNDERSHOOT_S - PEAK_S) + p.undershoot_sd_s * f[:, 1]
        disp = DISPERSION * np.exp(p.dispersion_sd * f[:, 2])
        if p.venous_share > 0:
            vein = self.venous(xyz)
            peak, under = peak + p.venous_delay_s * vein, under + p.venous_delay_s * vein
            disp = disp * np.where(vein, p.venous_dispersion, 1.0)
        return HrfShape(peak, np.maximum(under, peak + 2.0), disp, np.clip(RATIO * np.exp(p.ratio_sd * f[:, 3]), 0.1, 0.8))

    def venous(self, xyz: np.ndarray) -> np.ndarray:
        """Which positions lie over draining veins (none unless the physiology has venous voxels)."""
        share = self.physiology.venous_share
        # A unit-variance smooth field above its normal quantile: about ``share`` of positions, in patches.
        return self._vein_field(xyz)[:, 0] > norm.ppf(1 - share) if share > 0 else np.zeros(len(xyz), bool)

    def noise_loadings(self, xyz: np.ndarray) -> np.ndarray:
        """(n, k) loadings of the shared slow noise components, unit norm per position (k = 0: none)."""
        k = self.physiology.structured_components
        if k == 0:
            return np.zeros((len(xyz), 0))
        return _unit_rows(self._noise_field(xyz)[:, :k])

    def in_roi(self, xyz: np.ndarray) -> np.ndarray:
        """Which world positions (mm, head frame) belong to this subject's visual region."""
        return _visual_candidates(xyz) & (self._roi_field(xyz)[:, 0] >= self.roi_threshold)

    def voxel_params(self, xyz: np.ndarray) -> dict[str, np.ndarray]:
        """Per-voxel evoked mean, signal sd (both %) and reliability at positions ``xyz``.

        Smooth functions of position, so the same voxel gets the same values whatever grid samples it.
        """
        f = self._param_field(xyz)
        gain = np.exp(0.3 * f[:, 0])
        rel = np.clip(self.spec.reliability * np.exp(0.35 * f[:, 1]), 0.02, 0.9)
        return {"evoked": self.spec.evoked_pct * gain, "signal": self.spec.signal_pct * gain, "reliability": rel}

    def responses(self, latents: np.ndarray, xyz: np.ndarray | None = None) -> np.ndarray:
        """True responses (% signal change), shape (n_images, n_voxels), at ``xyz`` (default: own voxels)."""
        xyz = self.xyz if xyz is None else xyz
        latents = np.asarray(latents, np.float64)
        shared = latents @ _unit_rows(self._shared(xyz)).T
        # Random Fourier features of the latent: a stable response to the image that is not linear in
        # the shared latent, so a shared model cannot transfer it between people.
        specific_code = np.sqrt(2) * np.cos(latents @ self._specific_proj.T + self._specific_phase)
        specific = specific_code @ _unit_rows(self._specific(xyz)).T
        f = self.spec.specific_fraction
        part = np.sqrt(1 - f) * shared + np.sqrt(f) * specific
        p = self.voxel_params(xyz)
        return (p["evoked"] + p["signal"] * part).astype(np.float32)

    def noisy_betas(self, true: np.ndarray, rng: np.random.Generator, xyz: np.ndarray | None = None) -> np.ndarray:
        """Single-trial estimates whose per-voxel correlation with ``true`` is the voxel's reliability."""
        p = self.voxel_params(self.xyz if xyz is None else xyz)
        sd = p["signal"] * np.sqrt(1 / p["reliability"] ** 2 - 1)
        return (true + rng.normal(0, 1, true.shape) * sd).astype(np.float32)


class _FourierField:
    """Smooth random functions of position: random Fourier features with a length scale in mm."""

    def __init__(self, rng: np.random.Generator, n_out: int, scale_mm: float, n_features: int = 192) -> None:
        self.omega = rng.normal(0, 1 / scale_mm, (3, n_features))
        self.phase = rng.uniform(0, 2 * np.pi, n_features)
        self.weights = rng.normal(0, 1, (n_features, n_out)) * np.sqrt(2 / n_features)

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        return np.cos(np.asarray(xyz, float) @ self.omega + self.phase) @ self.weights


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)


def _visual_candidates(xyz: np.ndarray) -> np.ndarray:
    """Occipital and ventral-temporal cortex: posterior brain tissue (MNI y < -45 mm, z < 45 mm)."""
    data, affine = mni_template()
    ijk = np.rint((np.asarray(xyz, float) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = np.all((ijk >= 0) & (ijk < data.shape), axis=1)
    tissue = np.zeros(len(xyz), bool)
    i = ijk[inside]
    tissue[inside] = data[i[:, 0], i[:, 1], i[:, 2]] > 0.35
    return tissue & (xyz[:, 1] < -45) & (xyz[:, 2] < 45) & (xyz[:, 2] > -25)


@lru_cache(maxsize=1)
def _candidate_voxels() -> np.ndarray:
    data, affine = mni_template()
    ijk = np.argwhere(data > 0.35)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return xyz[_visual_candidates(xyz)]


# People of a dataset are numbered from here: a block of 100 numbers per dataset seed, split by role, so
# the people of a pretraining dataset and of a dataset of people to calibrate never share a brain (nor
# a name, which would hand the new person a pretrained ridge) unless a first person is asked for.
ROLE_FIRST = {"pretrain": 1, "new": 51, "new-overlap": 51, "any": 76}
ROLE_ROOM = {"pretrain": 50, "new": 25, "new-overlap": 25, "any": 25}


def first_person(role: str, dataset_seed: int) -> int:
    """The number (and seed) of a dataset's first person by default: sim01 for a pretraining dataset of
    seed 0, sim51 for the people to calibrate of seed 0, sim101 / sim151 for seed 1, ..."""
    if role not in ROLE_FIRST:
        raise ValueError(f"role must be one of {', '.join(ROLE_FIRST)}, got {role!r}")
    if dataset_seed < 0:
        raise ValueError(f"the dataset seed must be 0 or more, got {dataset_seed}")
    return 100 * dataset_seed + ROLE_FIRST[role]


def default_subjects(n: int = 4, base_seed: int = 1, reliability: float = NSD_RELIABILITY,
                     voxels: tuple[int, ...] = (1800, 1500, 2100, 1300, 1700, 1950, 1400, 1600),
                     physiology: str = "canonical") -> list[SubjectSpec]:
    """Several subjects with different voxel counts (NSD-like spread, scaled down for a CPU), numbered
    from ``base_seed``: person k is ``sim{k:02d}`` with seed k, the same brain in every dataset."""
    return [SubjectSpec(name=f"sim{base_seed + i:02d}", n_voxels=voxels[i % len(voxels)], seed=base_seed + i,
                        reliability=reliability, physiology=physiology) for i in range(n)]


def dataset_people(n: int, role: str, dataset_seed: int, first: int | None = None, **kwargs) -> list[SubjectSpec]:
    """A dataset's people: numbered from :func:`first_person` (new to every other dataset's default
    people), or from ``first`` when asked (e.g. to calibrate a person who was in pretraining)."""
    if first is None:
        first = first_person(role, dataset_seed)
        if n > ROLE_ROOM[role]:
            raise ValueError(f"at most {ROLE_ROOM[role]} people in a {role!r} dataset (numbers beyond would be "
                             f"another dataset's people), got {n}; pass a first person to number them yourself")
    if first < 1:
        raise ValueError(f"the first person must be 1 or more, got {first}")
    return default_subjects(n, base_seed=first, **kwargs)


def visit_person(k: int, dataset_seed: int, first: int | None = None, **kwargs) -> SubjectSpec:
    """The person of a volume-level visit (``rtdecode simulate run``): the ``k``-th (1-based) new person of
    ``dataset_seed`` by :func:`dataset_people`'s rule (sim51 for k 1 at seed 0), never a pretraining
    dataset's person; or person ``first + k - 1`` when a first person is asked for."""
    if first is None and not 1 <= k <= ROLE_ROOM["new"]:
        raise ValueError(f"--subject-seed is which new person of --seed, 1 to {ROLE_ROOM['new']} (sim"
                         f"{first_person('new', dataset_seed):02d} for 1), got {k}; to simulate a given brain (e.g. "
                         "a pretraining person's) pass --first-person N")
    if k < 1:
        raise ValueError(f"--subject-seed must be 1 or more, got {k}")
    return replace(dataset_people(k, "new", dataset_seed, first)[-1], **kwargs)
