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
from rtdecode.base.naming import compile_pattern, parse_name
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


def waiting_files(config: SessionConfig, series: int, rows: list[dict[str, str]]) -> list[Path]:
    """Files of ``series`` in the watch folder (the config's ``watch_dir`` and ``pattern``) that a restarted
    ``rtdecode run`` would still take: volumes not in the run's ``rows``. A per-slice export's names carry
    no volume, so its files beyond the stored volumes' slices count (the newest names)."""
    sc = config.scanner
    if not sc.watch_dir.is_dir():
        return []
    regex = compile_pattern(sc.pattern, per_slice=bool(sc.slices_per_volume))
    stored = {int(r["volume"]) for r in rows if r.get("volume", "").isdigit()}
    mine: list[tuple[int, str, Path]] = []
    for path in sc.watch_dir.iterdir():
        key = parse_name(regex, path.name)
        if key is not None and key.run == series and path.is_file():
            mine.append((key.volume, path.name, path))
    mine.sort()
    if sc.slices_per_volume:
        return [p for _v, _n, p in mine[len(stored) * sc.slices_per_volume:]]
    return [p for v, _n, p in mine if v not in stored and v < sc.volumes_per_run]


def _left_waiting(folder: SessionFolder, config: SessionConfig, todo: dict[int, str],
                  close_anyway: bool) -> tuple[dict[int, str], dict[int, str]]:
    """Runs to keep open because their files wait unread (run -> the line saying so), and what closing the
    others anyway drops (run -> the note)."""
    kept: dict[int, str] = {}
    dropped: dict[int, str] = {}
    where = config.scanner.watch_dir
    for row in folder.runs():
        number, series = int(row["run"]), int(row["series"])
        if todo.get(number) != CLOSED_BY_FINALIZE:
            continue
        files = waiting_files(config, series, folder.run_store(number).load()[0])
        if not files:
            continue
        n = len(files)
        if close_anyway:
            dropped[number] = (f"{n} file(s) of series {series} still waiting in {where} dropped: listed as not "
                               "received; a later rtdecode run sets them aside")
        else:
            kept[number] = (f"left open: {n} file(s) of series {series} wait unread in {where} (first: "
                            f"{files[0].name}); restart rtdecode run to take them, then finalize (or give "
                            "--close-anyway to close it now and drop them)")
    return kept, dropped


def close_runs(folder: SessionFolder, config: SessionConfig | None, close_anyway: bool = False) -> dict[int, str]:
    """Close every run whose end is not on record, as the scanner side would have; run -> one line saying how.
    A run left open whose files still wait unread in the watch folder stays open (its line says so, and starts
    with "left open") unless ``close_anyway``."""
    todo = unclosed_runs(folder, config.scanner.volumes_per_run if config is not None else None)
    if not todo:
        return {}
    if config is None:
        return {run: "left open: no config.toml in the session folder (give --config, the file rtdecode run ran "
                     "with)" for run in todo}
    kept, dropped = _left_waiting(folder, config, todo, close_anyway)
    todo = {run: end for run, end in todo.items() if run not in kept}
    done = _close(folder, config, todo)
    for run, note in dropped.items():
        done[run] += f"; {note}"
    return {**kept, **done}


def _close(folder: SessionFolder, config: SessionConfig, todo: dict[int, str]) -> dict[int, str]:
    """Close the runs in ``todo`` (run -> the end to record); run -> one line saying how."""
    if not todo:
        return {}
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
