"""What was shown and what was decoded, trial by trial, for ``rtdecode evaluate``.

What was shown comes from the session folder (each run's ``*_desc-<version>_betas.tsv``: one row per
estimated beta, with the image id); what was decoded from the decoder's folder for that session
(``results.tsv``, retrieval tokens, reconstructions). Anything missing or odd becomes one line in
``issues`` and the rest is still evaluated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.base.recorded import session_folder as open_session
from rtdecode.base.session import SessionFolder, read_tsv
from rtdecode.decoder.results import ResultStore, session_folder
from rtdecode.wire.schema import VERSION

BETAS_TABLE = re.compile(r"_run-(\d{2,4})_desc-([a-z0-9.]+)_betas\.tsv\Z")


class EvaluationError(ValueError):
    """Nothing can be evaluated: the inputs do not belong together."""


@dataclass
class Trial:
    run: int
    trial: int
    version: str
    image: str  # the id of the image shown
    key: str  # uid:run:trial:version, as the decoder stores it
    decoded: bool = False
    recon: Path | None = None  # the reconstruction, when one was made


@dataclass
class Collected:
    folder: SessionFolder
    store: ResultStore
    trials: list[Trial]  # decoded trials, in (version, run, trial) order
    issues: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # model and gallery folders the decoder used


def open_decoded(decoded: str | Path, folder: SessionFolder) -> ResultStore:
    """The decoder's results of ``folder``'s session: ``decoded`` is that session's results folder or a
    decoder --out holding it; one error names a folder of another session."""
    decoded = Path(decoded)
    here = decoded if (decoded / "session.json").exists() else session_folder(decoded, folder.subject, folder.session)
    if not (here / "session.json").exists():
        raise EvaluationError(f"{decoded}: no decoded results of sub-{folder.subject} ses-{folder.session} "
                              f"(expected {here}/session.json, written by rtdecode decode)")
    store = ResultStore(here, readonly=True)  # the decoder may still be writing
    want, got = folder.identity["session_uid"], store.identity.get("session_uid")
    if got != want:
        raise EvaluationError(f"{here}: decoded results of session uid {got} (sub-{store.identity.get('subject')} "
                              f"ses-{store.identity.get('session')}), but {folder.path} is session uid {want}: "
                              "not the same session; give the decoder folder of this session")
    return store


def shown_trials(folder: SessionFolder) -> list[Trial]:
    """Every estimated beta of the session: run, trial, version and the image shown."""
    uid = folder.identity["session_uid"]
    trials = []
    for table in sorted(folder.derivatives.glob(f"sub-{folder.subject}_ses-{folder.session}_*_betas.tsv")):
        match = BETAS_TABLE.search(table.name)
        if not match:
            continue
        run = int(match.group(1))
        for row in read_tsv(table):
            # The refine table holds every refinement (rt4.5, rt6.0, ...), each row naming its own version.
            version = row.get("version") or match.group(2)
            if not VERSION.fullmatch(version):
                continue
            trial = int(row["trial"])
            trials.append(Trial(run, trial, version, row["image"], f"{uid}:{run}:{trial}:{version}"))
    return sorted(trials, key=lambda t: (t.version, t.run, t.trial))


def collect(session: str | Path, decoded: str | Path) -> Collected:
    """Pair the session's trials with the decoder's results; unmatched ones are listed as issues."""
    folder = open_session(session)
    if not (folder.path / "session.json").exists():
        raise EvaluationError(f"{folder.path}: not a session folder (no session.json; rtdecode run writes one)")
    store = open_decoded(decoded, folder)
    trials = shown_trials(folder)
    if not trials:
        raise EvaluationError(f"{folder.derivatives}: no betas tables (*_desc-<version>_betas.tsv); nothing was estimated")
    rows = {r["key"]: r for r in store.rows()}
    issues: list[str] = []
    kept = []
    missing: dict[tuple[int, str], list[int]] = {}
    for t in trials:
        row = rows.pop(t.key, None)
        if row is None:
            missing.setdefault((t.run, t.version), []).append(t.trial)
            continue
        if row["image"] and row["image"] != t.image:
            issues.append(f"run {t.run} trial {t.trial} ({t.version}): the decoder was told image {row['image']!r}, "
                          f"the session shows {t.image!r}; the session's is used")
        t.decoded = True
        image = store.image_path(t.key)
        t.recon = image if image.exists() else None
        kept.append(t)
    for (run, version), absent in sorted(missing.items()):
        if not any(t.run == run and t.version == version for t in kept):
            issues.append(f"run {run} ({version}): not decoded ({len(absent)} betas; a run recorded without a "
                          "decoder, such as the calibration hour, or a decoder that wrote elsewhere)")
        else:
            listed = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
            issues.append(f"run {run} ({version}): trial(s) {listed} have no decoded result in {store.table}")
    if rows:
        issues.append(f"{len(rows)} decoded result(s) in {store.table} match no beta of the session "
                      f"(e.g. {next(iter(rows))}); left out")
    sources = {}
    info = store.folder / "sources.json"
    if info.exists():
        sources = {k: v for k, v in json.loads(info.read_text()).items() if k in ("model", "gallery")}
    return Collected(folder, store, kept, issues, sources)


def predicted_tokens(store: ResultStore, trials: list[Trial]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The retrieval tokens of each trial by key; a trial whose tokens are missing or unreadable is left
    out of retrieval, and one line says how many and why."""
    tokens, problems = {}, []
    for t in trials:
        try:
            tokens[t.key] = store.clip_tokens(t.key)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"{t.version} run {t.run} trial {t.trial} ({exc})")
    if problems:
        problems = [f"retrieval tokens missing or unreadable for {len(problems)} trial(s), left out of retrieval: "
                    + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")]
    return tokens, problems
