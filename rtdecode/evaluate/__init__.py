"""``rtdecode evaluate``: a decoded session scored as MindEye2 and Real-time MindEye score theirs.

collect (what was shown, what was decoded) -> score (rtdecode.evaluate.metrics, per trial and group)
-> report (tables, per-trial CSV, grid, histograms). docs/evaluation.md explains every column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtdecode.evaluate.captions import refined_trials, score_captions, write_captions
from rtdecode.evaluate.collect import EvaluationError, collect
from rtdecode.evaluate.report import write_grid, write_histograms, write_tables
from rtdecode.evaluate.retrieval import MINDEYE2_SEED, SCHEMES
from rtdecode.evaluate.score import ImageSource, Scores, score

__all__ = ["EvaluationError", "SCHEMES", "evaluate_session"]


def evaluate_session(session: str | Path, decoded: str | Path, out: str | Path | None = None,
                     weights: str | Path | None = None, gallery: str | Path | None = None,
                     model: str | Path | None = None, seed: int | None = None, draws: str = "rtdecode",
                     oracle: bool = False) -> tuple[Scores, dict[str, Path]]:
    """Score every decoded trial of ``session``; write the evaluation into ``out``.

    ``gallery`` and ``model`` default to the folders the decoder recorded in its ``sources.json``;
    ``weights`` is the folder of the feature networks' files (``rtdecode models download``). ``draws``:
    how 50- and 300-way subsets are drawn (``mindeye2``: its generator, seed 42 unless ``seed`` says
    otherwise). ``oracle``: score the shown images as their own reconstructions (every figure perfect).
    """
    if draws not in SCHEMES:
        raise ValueError(f"draws: expected one of {', '.join(SCHEMES)}, got {draws!r}")
    seed = seed if seed is not None else MINDEYE2_SEED if draws == "mindeye2" else 0
    collected = collect(session, decoded)
    gallery = gallery or collected.sources.get("gallery")
    model = model or collected.sources.get("model")
    if gallery is not None and not Path(gallery).is_dir():
        collected.issues.append(f"gallery {gallery} not found; built-in images only")
        gallery = None
    if model is not None and not (Path(model) / "embedder.json").is_file():
        collected.issues.append(f"model folder {model} not found (no embedder.json)")
        model = None
    source = ImageSource(gallery)
    collected.trials += refined_trials(collected.trials, collected.store.refined_path)  # their own version
    scores = score(collected, source, Path(weights) if weights else None, Path(model) if model else None, seed,
                   draws, oracle)
    out = Path(out) if out is not None else collected.store.folder / "evaluation"
    who = f"sub-{collected.folder.subject} ses-{collected.folder.session}"
    # an oracle's perfect figures must never be mistaken for a session's: every output says what it is
    title = f"Oracle check of {who} (not a result)" if oracle else f"Evaluation of {who}"
    caption_title = f"Oracle check of the caption metrics, {who} (not a result)" if oracle else "Captions"
    paths = write_tables(scores, out, title)
    captions = score_captions(collected.trials, collected.store.captions(), Path(gallery) if gallery else None,
                              Path(weights) if weights else None, oracle)
    paths.update(write_captions(captions, out, caption_title))
    recon = {(t.version, t.run, t.trial): t.recon for t in collected.trials}

    def recon_image(row: dict) -> np.ndarray:
        if oracle:
            return source.load(row["image"])
        from rtdecode.gallery.folder import load_image

        return load_image(recon[(row["version"], row["run"], row["trial"])])

    banner = "ORACLE CHECK (not a result)" if oracle else None
    grid = write_grid(scores, source.load, recon_image, out / "grid.png", banner=banner)
    hist = write_histograms(scores, out / "histograms.png", banner=banner)
    paths.update({k: v for k, v in (("grid", grid), ("histograms", hist)) if v is not None})
    return scores, paths
