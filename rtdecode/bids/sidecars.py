"""The JSON sidecars of a finalised run: the raw run's acquisition, the space the derivative images are in,
and the model every betas image was estimated with."""

from __future__ import annotations

import json
from pathlib import Path

from rtdecode.base.session import SessionFolder, read_tsv

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ACQUISITION_SECONDS = {"RepetitionTime", "EchoTime"}  # DICOM gives milliseconds; BIDS wants seconds
# DICOM keyword -> BIDS key (DICOM's ManufacturerModelName is BIDS's ManufacturersModelName)
ACQUISITION_KEEP = {"EchoTime": "EchoTime", "FlipAngle": "FlipAngle", "Manufacturer": "Manufacturer",
                    "ManufacturerModelName": "ManufacturersModelName", "SoftwareVersions": "SoftwareVersions",
                    "MagneticFieldStrength": "MagneticFieldStrength"}
# Read from the Siemens CSA headers at ingest (rtdecode.ingest.acquisition), already in BIDS's units.
AS_IS = ("SliceTiming", "MultibandAccelerationFactor", "PhaseEncodingDirection")


def session_config(folder: SessionFolder) -> dict:
    """The session's ``config.toml`` as a dict ({} when absent or unreadable: a sidecar then says less)."""
    path = folder.path / "config.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def configured_stimuli(folder: SessionFolder) -> Path | None:
    """``[session] stimuli`` of the session's config.toml: the folder of shown images, when it is one."""
    value = session_config(folder).get("session", {}).get("stimuli") or ""
    path = Path(value) if isinstance(value, str) and value else None
    return path if path is not None and path.is_dir() else None


def raw_sidecar(folder: SessionFolder, run: int, tr: float, acquisition: dict, missing: list[int], n: int) -> dict:
    """The raw run's sidecar: timing, allow-listed DICOM fields, and every volume that did not arrive
    (gaps and, where the session expected more, those after the last one received)."""
    sidecar: dict = {"RepetitionTime": tr, "TaskName": folder.task}
    dicom = acquisition.get("dicom", {})
    for key, bids_key in ACQUISITION_KEEP.items():
        if key in dicom:
            sidecar[bids_key] = float(dicom[key]) / 1000.0 if key in ACQUISITION_SECONDS else dicom[key]
    sidecar.update({key: dicom[key] for key in AS_IS if key in dicom})
    sidecar["MissingVolumes"] = missing  # 0-based; filled with the mean of the nearest received volumes
    sidecar["MissingVolumesFilledWith"] = "mean of the nearest received volumes before and after"
    expected = session_config(folder).get("scanner", {}).get("volumes_per_run")
    ends = {int(r["run"]): r for r in read_tsv(folder.path / "run_ends.tsv") if r.get("run", "").isdigit()}
    if run in ends:
        sidecar["RunEnd"] = ends[run].get("reason", "")
    if isinstance(expected, int) and expected > n:
        sidecar["VolumesExpected"] = expected  # scanner.volumes_per_run of the session's configuration
        sidecar["VolumesNotReceivedAtEnd"] = list(range(n, expected))
    return sidecar


def spatial_reference(reference: Path | None, dataset: Path) -> str:
    """SpatialReference for a ``space-boldref``/``space-mask`` image: a BIDS URI of the reference image."""
    if reference is None:
        return "the run's motion-correction reference (not written)"
    return "bids::" + reference.relative_to(dataset).as_posix()


def betas_model(folder: SessionFolder, run: int, version: str) -> dict:
    """The model a betas image was estimated with, in the GLM's own vocabulary
    (:func:`rtdecode.glm.store.betas_model_description`): its ``model`` record beside the live betas,
    else derived from the ``glm`` settings there, else from the session's ``config.toml`` [glm]."""
    info_path = folder.derivatives / f"{folder.prefix(run)}_desc-{version}_betas.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        info = {}
    if isinstance(info.get("model"), dict):
        return _noted({"source": info_path.name, **info["model"]})
    cfg = session_config(folder).get("glm", {})
    glm, source = (info["glm"], info_path.name) if isinstance(info.get("glm"), dict) else (cfg, "config.toml")
    kind = glm.get("hrf") or glm.get("hrf_model") or "glover"
    denoise = glm.get("denoise", 0)
    count = denoise if isinstance(denoise, int) else int(denoise) if str(denoise).isdigit() else None
    tuning = glm.get("tuning", cfg.get("tuning")) or None
    return _noted({
        "source": source,
        "hrf": {"kind": kind},
        "noise_model": glm.get("noise_model"), "drift_model": glm.get("drift_model"),
        "high_pass_hz": glm.get("high_pass"), "motion_confounds": glm.get("motion_confounds"),
        "noise_components": {"mode": "none", "count": 0} if denoise in (0, "0", "off", None) else
        {"mode": glm.get("denoise_mode", "configured"), "count": count if count is not None else str(denoise)},
        "design": "LSS: the trial, all other trials, confounds, drift, constant",
        "tuning": None if tuning is None else {"folder": str(tuning)}})


def _noted(model: dict) -> dict:
    hrf = model.get("hrf")
    if isinstance(hrf, dict) and hrf.get("kind") not in (None, "glover"):
        model["note"] = ("per-voxel HRFs from the tuning: a model with one canonical HRF (e.g. nilearn's Glover) "
                         "reproduces these betas only approximately")
    return model
