"""``rtdecode evaluate``: a decoded session scored as MindEye2 and Real-time MindEye score theirs.

collect (what was shown, what was decoded) -> score (rtdecode.evaluate.metrics, per trial and group)
-> report (tables, per-trial CSV, grid, histograms). docs/evaluation.md explains every column.
"""

from __future__ import annotations

from pathlib import Path

from rtdecode.evaluate.captions import refined_trials, score_captions, write_captions
from rtdecode.evaluate.collect import EvaluationError, collect
from rtdecode.evaluate.report import write_grid, write_histograms, write_tables
from rtdecode.evaluate.score import ImageSource, Scores, score

__all__ = ["EvaluationError", "evaluate_session"]


def evaluate_session(session: str | Path, decoded: str | Path, out: str | Path | None = None,
                     weights: str | Path | None = None, gallery: str | Path | None = None,
                     model: str | Path | None = None, seed: int = 0) -> tuple[Scores, dict[str, Path]]:
    """Score every decoded trial of ``session``; write the evaluation into ``out``.

    ``gallery`` and ``model`` default to the folders the decoder recorded in its ``sources.json``;
    ``weights`` is the folder of the feature networks' files (``rtdecode models download``).
    """
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
    scores = score(collected, source, Path(weights) if weights else None, Path(model) if model else None, seed)
    out = Path(out) if out is not None else collected.store.folder / "evaluation"
    title = f"Evaluation of sub-{collected.folder.subject} ses-{collected.folder.session}"
    paths = write_tables(scores, out, title)
    paths.update(write_captions(score_captions(collected.trials, collected.store.captions(), Path(gallery) if gallery
                                               else None, Path(weights) if weights else None), out))
    recon = {t.key: t.recon for t in collected.trials}
    keys = {(t.version, t.run, t.trial): t.key for t in collected.trials}
    grid = write_grid(scores, source.load, lambda r: recon[keys[(r["version"], r["run"], r["trial"])]], out / "grid.png")
    hist = write_histograms(scores, out / "histograms.png")
    paths.update({k: v for k, v in (("grid", grid), ("histograms", hist)) if v is not None})
    return scores, paths
