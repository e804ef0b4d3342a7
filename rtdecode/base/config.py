"""Session configuration: one TOML file with every setting a run needs, validated up front.

The settings themselves (sections, fields, defaults) are rtdecode.base.settings; this module reads,
checks and writes them.

An unknown key, a missing file or a bad value raises one :class:`ConfigError` that names the key
(``scanner.tr_s``), what was expected and what was given. Relative paths are resolved against the
folder of the configuration file, so a session folder can be moved as a whole.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from rtdecode.base.errors import ConfigError
from rtdecode.base.naming import compile_pattern
from rtdecode.base.settings import GLMSection, NetworkSection, SessionConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


_LABEL = re.compile(r"\A[A-Za-z0-9]{1,32}\Z")  # the wire's labels (rtdecode.wire.schema.LABEL)
_POSITIVE = {
    "scanner.poll_interval_s", "scanner.tr_s", "scanner.volumes_per_run", "scanner.partial_timeout_s",
    "scanner.missing_timeout_s", "preprocess.fd_threshold_mm", "preprocess.max_iterations",
    "preprocess.sample_stride", "preprocess.alignment_max_shift_mm", "preprocess.alignment_max_rotation_deg",
    "glm.high_pass", "glm.delay_s", "network.resend_s", "network.drain_s",
    "network.max_message_mb",
}
_PORTS = {"network.betas_port", "network.results_port"}
_FOLDERS = {"session.stimuli", "models.folder"}  # named as folders in a missing-path error
_MUST_EXIST = {"session.stimuli", "preprocess.session_reference", "preprocess.mask", "models.folder", "glm.zscore_stats", "glm.tuning",
               "network.curve_secret", "network.curve_decoder_key", "network.curve_allowed"}


def load_config(path: str | Path) -> SessionConfig:
    """Read and validate a session configuration file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, base_dir=path.parent, source=str(path))


def config_from_dict(raw: dict[str, Any], base_dir: Path = Path("."), source: str = "config") -> SessionConfig:
    """Build a validated :class:`SessionConfig` from nested dicts (as TOML gives them)."""
    cfg = SessionConfig()
    hints = get_type_hints(SessionConfig)
    for section_name, section_raw in raw.items():
        if section_name not in hints:
            raise ConfigError(
                f"{source}: unknown section [{section_name}]; expected one of {sorted(hints)}"
            )
        if not isinstance(section_raw, dict):
            raise ConfigError(f"{source}: [{section_name}] must be a table, got {section_raw!r}")
        section = getattr(cfg, section_name)
        section_hints = get_type_hints(type(section))
        for key, value in section_raw.items():
            dotted = f"{section_name}.{key}"
            if key not in section_hints:
                raise ConfigError(
                    f"{source}: unknown key {dotted}; expected one of {sorted(section_hints)}"
                )
            setattr(section, key, _coerce(dotted, section_hints[key], value, base_dir, source))
    _validate(cfg, source)
    return cfg


def _coerce(dotted: str, hint: Any, value: Any, base_dir: Path, source: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {dotted} must be one of {list(args)}, got {value!r}")
        return value
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
        if value == "":
            return None
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {dotted} must be a path string, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base_dir / p)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {dotted} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {dotted} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if dotted == "glm.denoise" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # denoise = 3 in TOML
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {dotted} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {dotted} has unsupported type {hint}")  # pragma: no cover


def _validate(cfg: SessionConfig, source: str) -> None:
    for name in ("subject", "session", "task"):
        value = getattr(cfg.session, name)
        if not _LABEL.fullmatch(value):
            raise ConfigError(f"{source}: session.{name} must be letters and digits only (1 to 32), got {value!r}")
    for dotted in _POSITIVE:
        value = _get(cfg, dotted)
        if value <= 0:
            raise ConfigError(f"{source}: {dotted} must be positive, got {value!r}")
    for name in ("control_port", "events_port"):
        value = getattr(cfg.network, name)
        if not -1 <= value <= 65535:
            raise ConfigError(f"{source}: network.{name} must be a TCP port (0-65535; 0 = any free port) or -1 for "
                              f"off, got {value!r}")
    for dotted in _PORTS:
        value = _get(cfg, dotted)
        if not 0 <= value <= 65535:
            raise ConfigError(f"{source}: {dotted} must be a TCP port (0-65535; 0 = any free port), got {value!r}")
    for dotted in _MUST_EXIST:
        value = _get(cfg, dotted)
        if value is not None and not Path(value).exists():
            what = "folder" if dotted in _FOLDERS else "file"
            raise ConfigError(f"{source}: {dotted} names a {what} that does not exist: {value}")
    for name in ("min_free_gb", "space_check_every"):
        if getattr(cfg.session, name) < 0:
            raise ConfigError(f"{source}: session.{name} must be >= 0 (0: off), got {getattr(cfg.session, name)!r}")
    if cfg.preprocess.reference_volume < 0:
        raise ConfigError(
            f"{source}: preprocess.reference_volume must be >= 0, got {cfg.preprocess.reference_volume}"
        )
    if not 0 < cfg.preprocess.mask_threshold < 1:
        raise ConfigError(
            f"{source}: preprocess.mask_threshold must be between 0 and 1, got {cfg.preprocess.mask_threshold}"
        )
    if cfg.network.decoder and not re.fullmatch(r"(tcp|ipc)://\S+", cfg.network.decoder):
        raise ConfigError(f"{source}: network.decoder must be an address like tcp://127.0.0.1:5556, got {cfg.network.decoder!r}")
    _validate_network(cfg.network, source)
    cfg.threads.check(source)
    if cfg.glm.zscore == "calibration" and cfg.glm.zscore_stats is None:
        raise ConfigError(f"{source}: glm.zscore = \"calibration\" needs glm.zscore_stats (the calibrated model's folder)")
    _validate_glm(cfg.glm, source)
    if cfg.glm.events is not None:
        try:
            str(cfg.glm.events).format(run=1, series=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{source}: glm.events: only {{run}} and {{series}} placeholders are allowed, "
                              f"got {str(cfg.glm.events)!r} ({exc})") from None
    if cfg.scanner.slices_per_volume < 0:
        raise ConfigError(f"{source}: scanner.slices_per_volume must be 0 (one file per volume) or the number of "
                          f"slices in a volume, got {cfg.scanner.slices_per_volume}")
    if cfg.scanner.slices_per_volume and cfg.scanner.format == "nifti":
        raise ConfigError(f"{source}: scanner.slices_per_volume is for DICOM slice files; scanner.format is \"nifti\"")
    try:
        compile_pattern(cfg.scanner.pattern, per_slice=cfg.scanner.slices_per_volume > 0)
    except ValueError as exc:
        raise ConfigError(f"{source}: scanner.pattern: {exc}") from None


def check_denoise(value: str) -> str:
    """A denoise setting (glm.denoise, calibrate --glm-denoise): "off", "auto" or a count from 1 to 10."""
    if not (value in ("off", "auto") or (value.isdigit() and 1 <= int(value) <= 10)):
        raise ValueError(f"must be \"off\", \"auto\" or a number of components from 1 to 10, got {value!r}")
    return value


def denoise_count(value: str, tuned: int | None) -> int:
    """Noise components to use: none for "off", the tuning's count (``tuned``) for "auto", else the number."""
    if value == "off":
        return 0
    return (tuned or 0) if value == "auto" else int(value)


def needs_tuning(hrf: str, denoise: str) -> bool:
    """Whether a GLM configuration reads the calibration hour's tuning (glm_tuning.npz)."""
    return hrf != "glover" or denoise != "off"


def _validate_glm(g: GLMSection, source: str) -> None:
    try:
        check_denoise(g.denoise)
    except ValueError as exc:
        raise ConfigError(f"{source}: glm.denoise {exc}") from None
    if needs_tuning(g.hrf, g.denoise) and g.tuning is None:
        raise ConfigError(f"{source}: glm.hrf = {g.hrf!r} and glm.denoise = {g.denoise!r} need glm.tuning (the folder "
                          "with glm_tuning.npz from the calibration hour: rtdecode calibrate --glm-tune)")
    if g.denoise_min_frames < 0:
        raise ConfigError(f"{source}: glm.denoise_min_frames must be >= 0, got {g.denoise_min_frames}")
    if not 0 < g.first_delay_s <= g.final_delay_s < 100:
        raise ConfigError(f"{source}: glm.first_delay_s and glm.final_delay_s must satisfy 0 < first <= final < 100 s, "
                          f"got {g.first_delay_s:g} and {g.final_delay_s:g}")


def _validate_network(net: NetworkSection, source: str) -> None:
    keyed = [k for k in ("curve_allowed", "curve_decoder_key") if getattr(net, k) is not None]
    if net.curve_secret is None and keyed:
        raise ConfigError(f"{source}: network.{keyed[0]} needs network.curve_secret (this host's secret key)")
    if net.curve_secret is not None and not keyed:
        raise ConfigError(f"{source}: network.curve_secret is set but neither network.curve_allowed (who may connect "
                          "here) nor network.curve_decoder_key (the decoder's public key) is")
    if net.decoder and net.curve_secret is not None and net.curve_decoder_key is None:
        raise ConfigError(f"{source}: network.decoder with CURVE needs network.curve_decoder_key (the decoder's public key)")
    if net.allow_plaintext:
        return
    if not _local_host(net.host) and net.curve_allowed is None:
        raise ConfigError(f"{source}: network.host = {net.host!r} lets other hosts reach the events and control "
                          "sockets; set network.curve_secret and network.curve_allowed (rtdecode keys), or "
                          "network.allow_plaintext = true on purpose")
    if net.decoder and not _local_host(net.decoder.split("://", 1)[-1].rsplit(":", 1)[0]) \
            and not net.decoder.startswith("ipc://") and net.curve_decoder_key is None:
        raise ConfigError(f"{source}: network.decoder = {net.decoder!r} is another host; set network.curve_secret and "
                          "network.curve_decoder_key (rtdecode keys), or network.allow_plaintext = true on purpose")


def _local_host(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1", "[::1]")


def _get(cfg: SessionConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def config_to_toml(cfg: SessionConfig) -> str:
    """Write a configuration back as TOML (for templates and the copy kept in the session folder)."""
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        lines.append(f"[{f.name}]")
        section = getattr(cfg, f.name)
        for sf in dataclasses.fields(section):
            value = getattr(section, sf.name)
            lines.append(f"{sf.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
