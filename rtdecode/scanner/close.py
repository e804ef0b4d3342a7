"""Closing runs after the scanner side has gone: a run it left open (the process killed) gets its end.

``rtdecode run`` keeps the configuration it runs with in the session folder (``config.toml``, its paths
made absolute), so ``rtdecode session finalize`` can do for such a run what the scanner side does at a
run's end: the end-of-run betas (and the real-time estimate of a trial whose window never came), with
the session's z-score statistics rebuilt from the runs before it, then the run's end on record.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

from rtdecode.base.config import config_from_dict, config_to_toml
from rtdecode.base.errors import ConfigError
from rtdecode.base.session import SessionFolder
from rtdecode.base.settings import SessionConfig
from rtdecode.glm.runner import TrialBetas, events_path
from rtdecode.scanner.runs import CLOSED_BY_FINALIZE, RunBook

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

KEPT = ("session", "scanner", "glm")  # what closing a run needs; keys and masks may have moved since


def keep_config(folder: SessionFolder, config: SessionConfig) -> None:
    """Write ``config`` as the session folder's ``config.toml``, every path absolute (read from anywhere)."""
    absolute = copy.deepcopy(config)
    for part in dataclasses.fields(absolute):
        section = getattr(absolute, part.name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, Path):
                setattr(section, f.name, value.absolute())
    tmp = folder.path / ".config.toml.tmp"
    tmp.write_text(config_to_toml(absolute))
    tmp.replace(folder.path / "config.toml")


def session_config(folder: SessionFolder, path: Path | None = None) -> SessionConfig | None:
    """The configuration a session ran with (``path``, else its ``config.toml``); None when there is none."""
    if path is not None and not path.exists():
        raise ConfigError(f"{path}: configuration file not found")
    path = path if path is not None else folder.path / "config.toml"
    if not path.exists():
        return None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict({k: v for k, v in raw.items() if k in KEPT}, base_dir=path.parent, source=str(path))


def unclosed_runs(folder: SessionFolder, volumes_per_run: int | None) -> dict[int, str]:
    """Runs whose end is not on record -> the end they had (or :data:`CLOSED_BY_FINALIZE` for the open one)."""
    book = RunBook(folder, 1.0)
    rows = folder.runs()
    out: dict[int, str] = {}
    for i, row in enumerate(rows):
        run = book.resumed_state(row, last=i == len(rows) - 1)
        if book.recorded(run.number):
            continue
        if not run.ended and volumes_per_run is not None and len(run.store.load()[0]) >= volumes_per_run:
            run.end_reason = "complete"  # killed after its last volume, before its end was written
        out[run.number] = run.end_reason or CLOSED_BY_FINALIZE
    return out


def close_runs(folder: SessionFolder, config: SessionConfig | None) -> dict[int, str]:
    """Close every run whose end is not on record, as the scanner side would have; run -> one line saying how."""
    todo = unclosed_runs(folder, config.scanner.volumes_per_run if config is not None else None)
    if not todo:
        return {}
    if config is None:
        return {run: "left open: no config.toml in the session folder (give --config, the file rtdecode run ran "
                     "with)" for run in todo}
    betas = TrialBetas(config, folder, lambda beta, resumed: None)
    stateful = config.glm.zscore == "running" or config.glm.average_repeats  # statistics run across the session
    done: dict[int, str] = {}
    for row in folder.runs():
        number, series = int(row["run"]), int(row["series"])
        if number not in todo and not (stateful and number < max(todo)):
            continue
        rows, vectors = folder.run_store(number).load()
        failed = None
        try:
            betas.resume_run(number, series, rows, vectors)  # replays the stored betas through the z-scoring
            ending = [e for e in betas.end_run(number) if e.version == "endofrun"] if number in todo else []
        except ConfigError:
            raise
        except Exception as exc:  # as on the scanner side: no betas for this run, and it still ends
            log.exception("run %d: GLM failed while closing it", number)
            failed = f"GLM failed: {type(exc).__name__}: {exc}"
        if number in todo:
            folder.log_run_end(number, todo[number], sum(r["status"] == "ok" for r in rows))
            ok = failed is None and number in betas.glms
            done[number] = f"closed ({_betas_line(ending if ok else None, failed, config, number, series, len(vectors))})"
        betas.release(number)
    return done


def _betas_line(ending: list | None, failed: str | None, config: SessionConfig, run: int, series: int,
                n_stored: int) -> str:
    if ending is not None:
        return f"end-of-run betas: {len(ending)} trials" if ending else "end-of-run betas were already there"
    path = events_path(config, run, series)
    why = (failed or ("glm.enabled is false" if not config.glm.enabled else "glm.events is not set" if path is None
                      else f"no events table at {path}" if not path.exists() else "no volume stored" if not n_stored
                      else "its events table could not be used"))
    return f"no end-of-run betas: {why}"
