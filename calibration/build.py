"""From recorded data to a model folder the decoder loads as it is.

Model folder: ``model.safetensors`` + ``config.json`` (MindEye2), ``subject.json`` (whose ridge, and,
calibrated from a recorded session, whose brain: the session's participant label and voxel set),
``embedder.json`` (the token space), ``zscore_mean.npy`` / ``zscore_std.npy`` (the subject's training
statistics, for ``glm.zscore = "calibration"``) and ``training.json`` (settings, losses, held-out
retrieval).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from calibration.data import SubjectData, split_by_image
from calibration.heldout import evaluate, new_model
from calibration.splits import (
    parse_holdout,
    read_training_images,
    require_disjoint,
    require_new_person,
    write_training_images,
    write_training_people,
)
from calibration.trainer import TrainConfig, train
from models.folder import standin_spec, write_model_folder
from models.mindeye2.checkpoint import load_pretrained
from models.mindeye2.model import MindEye2
from models.standin import StandInEmbedder
from rtdecode.gallery.builtin import StimulusSet, builtin_images
from rtdecode.gallery.embed import ImageSource, embed_ids
from rtdecode.gallery.folder import folder_source


def standin_tokens(images: list[str], cache: Path | None = None, n_images: int | None = None,
                   folder: Path | None = None) -> np.ndarray:
    """Stand-in tokens of built-in stimulus ids (embedded once per image, cached on disk); ``n_images``:
    a built-in set larger than the default 1,200 (a simulated dataset says which it drew from); ``folder``:
    the images are the files of this folder named by id instead (a recorded session's own images)."""
    return embed_ids(images, StandInEmbedder(), cache, images=image_source(folder, n_images))


def image_source(folder: Path | None = None, n_images: int | None = None) -> ImageSource:
    """Where images come from by id: ``folder``'s files (named by id), else the built-in stimuli, whose
    error for another id says how to give a session's own images."""
    if folder is not None:
        return folder_source(folder)
    source = builtin_images if n_images is None else StimulusSet(n=n_images).by_id

    def builtin(ids: list[str]) -> np.ndarray:
        try:
            return source(ids)
        except ValueError as exc:
            raise ValueError(f"{exc}; a session with its own images: give them with --images DIR (a folder of PNG "
                             "or JPEG files named by image id)") from None

    return builtin


def blur_targets(images: list[str], vae, cache: Path | None = None, folder: Path | None = None) -> np.ndarray | None:
    """Blurry-branch targets (trials x 4 x 28 x 28) of the images (built-in ids, or ``folder``'s); None without a VAE."""
    return None if vae is None else embed_ids(images, vae, cache, images=image_source(folder))


def load_trial_dataset(folder: str | Path, subject: str, cache: Path | None = None, vae=None) -> SubjectData:
    """One subject of a dataset written by ``rtdecode simulate betas`` (all its sessions, z-scored per session)."""
    folder = Path(folder)
    sub = folder / f"sub-{subject}"
    if not sub.is_dir():
        raise FileNotFoundError(f"{folder}: no subject {subject!r} (found {sorted(p.name[4:] for p in folder.glob('sub-*'))})")
    index = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else {}
    entry = next((e for e in index.get("subjects", []) if e.get("name") == subject), {})
    person = entry.get("person") or (f"simulated:seed={entry['seed']}" if "seed" in entry else None)
    n_images = index.get("stimuli", {}).get("n")
    betas, images, runs = [], [], []
    for k, ses in enumerate(sorted(sub.glob("ses-*"))):
        b = np.load(ses / "betas.npy", allow_pickle=False)
        with open(ses / "trials.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        betas.append((b - b.mean(0)) / (b.std(0) + 1e-6))  # per session, as sessions drift
        images += [r["image"] for r in rows]
        runs += [100 * k + int(r["run"]) for r in rows]  # run numbers of later sessions continue at 101, 201, ...
    all_betas = np.concatenate(betas).astype(np.float32)
    return SubjectData(subject, all_betas, images, standin_tokens(images, cache, n_images),
                       blur=blur_targets(images, vae, cache), runs=np.asarray(runs), person=person)


def load_session(session: str | Path, subject: str, cache: Path | None = None, noise_model: str = "ar1",
                 vae=None, glm=None, train_on: str = "endofrun", tuning=None, images_dir: Path | None = None,
                 embedder=None) -> SubjectData:
    """A session recorded by rtdecode: every run's betas by the GLM's offline mode.

    ``glm`` (GLMSettings; default Real-time MindEye's with ``noise_model``) and ``tuning`` (the session's
    GLM tuning) say how; ``train_on`` which betas: 'endofrun' (whole run), 'realtime' (as the live GLM
    sends them at ``glm.delay_s``) or 'both'. ``vae`` (a :class:`models.blurry.VaeTargets`) adds
    blurry-branch targets of the shown images. ``images_dir``: the session's own images, files named by id
    (default: built-in stimulus ids); ``embedder``: their token space (default the stand-in)."""
    from rtdecode.base.recorded import session_folder
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.offline import training_betas

    settings = glm or GLMSettings(noise_model=noise_model)
    result = training_betas(session_folder(session), settings, train_on, tuning)
    participant, _ = session_participant(session)
    tokens = embed_ids(result.images, embedder or StandInEmbedder(), cache, images=image_source(images_dir))
    return SubjectData(subject, result.betas.astype(np.float32), result.images, tokens,
                       blur=blur_targets(result.images, vae, cache, images_dir), runs=np.asarray(result.runs),
                       person=None if participant is None else f"participant:{participant}")


def token_space(kind: str):
    """(embedder, embedder.json spec) for ``standin`` or ``openclip`` (ViT-bigG-14, the published targets)."""
    if kind == "standin":
        return StandInEmbedder(), standin_spec()
    if kind == "openclip":
        from models.clip import ClipTokenEmbedder

        spec = {"kind": "openclip", "model": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k"}
        return ClipTokenEmbedder(spec["model"], spec["pretrained"]), spec
    raise ValueError(f"token space must be 'standin' or 'openclip', got {kind!r}")


def session_participant(source: str | Path | None) -> tuple[str | None, str]:
    """(participant label, voxel-set fingerprint) of a session folder recorded by rtdecode; (None, "")
    for any other source (a simulated dataset, NSD), whose subject names no scanner participant."""
    if source is None or not (Path(source) / "session.json").is_file():
        return None, ""
    info = json.loads((Path(source) / "session.json").read_text(encoding="utf-8"))
    # The session's one voxel space (rtdecode.preprocess.space), not a run's own mask.
    masks = [m for m in sorted((Path(source) / "derivatives" / "rtdecode" / "func").glob("*_desc-brain_mask.nii"))
             if "_run-" not in m.name]
    space = f"sha256:{hashlib.sha256(masks[0].read_bytes()).hexdigest()}" if masks else ""
    return str(info["subject"]), space


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _write_folder(model: MindEye2, out: Path, subject: str, data: SubjectData | None, config: TrainConfig,
                  history: dict, evaluation: dict, embedder: dict | None = None, extra: dict | None = None) -> Path:
    """The main process writes the folder; every process returns once it is complete (a barrier), so a
    process that goes on to read it (calibrating from a model pretrained in the same run) finds it whole."""
    from accelerate import PartialState

    if _is_main():
        _write(model, out, subject, data, config, history, evaluation, embedder, extra)
    PartialState().wait_for_everyone()
    return out


def _write(model: MindEye2, out: Path, subject: str, data: SubjectData | None, config: TrainConfig, history: dict,
           evaluation: dict, embedder: dict | None, extra: dict | None) -> None:
    participant, space = session_participant((extra or {}).get("source"))
    write_model_folder(model, out, subject, embedder, participant=participant, voxel_space=space)
    if data is not None and data.mean is not None:
        np.save(out / "zscore_mean.npy", data.mean)
        np.save(out / "zscore_std.npy", data.std)
    summary = {"train": config.to_dict(), "steps": history["steps"], "processes": history["processes"],
               "final_loss": history["loss"][-1:], "evaluation": evaluation, **(extra or {})}
    np.savez(out / "history.npz", **{k: np.asarray(history[k], np.float32) for k in ("loss", "clip", "prior", "blurry")})
    (out / "training.json").write_text(json.dumps(summary, indent=2))


def pretrain(subjects: list[SubjectData], out: str | Path, config: TrainConfig, hidden: int = 128,
             progress=None, embedder: dict | None = None, resume: bool = False) -> Path:
    """A shared model over several subjects (each z-scored already)."""
    torch.manual_seed(config.seed)  # the same initial weights every time: a run can be repeated
    model = new_model(subjects, hidden)
    start = time.monotonic()
    history = train(model, subjects, config, out=Path(out) / "checkpoints", resume=resume, progress=progress)
    images = {im for s in subjects for im in s.images}
    if _is_main():
        write_training_images(out, images)  # calibration checks its held-out images against these
        write_training_people(out, [s.person for s in subjects if s.person is not None])  # and its person
    return _write_folder(model, Path(out), subjects[0].subject, None, config, history, {}, embedder,
                         {"seconds": round(time.monotonic() - start, 1), "subjects": [s.subject for s in subjects],
                          "training_images": len(images)})


def calibrate(data: SubjectData, out: str | Path, config: TrainConfig, pretrained: str | Path | None = None,
              resume: bool = False, hidden: int = 128, progress=None, embedder: dict | None = None,
              source: str | None = None, compare_scratch: bool = False, holdout: str | set[str] | None = None,
              allow_overlap: bool = False, allow_seen_person: bool = False, tune=None) -> Path:
    """Fine-tune a pretrained model on one subject's session (or train from scratch without one).

    ``holdout`` picks the held-out images (:func:`calibration.splits.parse_holdout`; default the repeated
    ones). Training is refused (OverlapError) when any of them is in the pretrained model's training
    images, unless ``allow_overlap``. ``compare_scratch`` also trains a fresh model on the same trials
    (into ``<out>/scratch``) and records its held-out retrieval beside this one's: what the pretraining bought.
    A person whose brain (or subject name) was in pretraining is refused (SeenPersonError) unless
    ``allow_seen_person``; then the first line printed, training.json and the report say so. ``tune`` (a
    :class:`calibration.tuning.Grid`) picks the learning rate and epochs on a validation split of the
    training trials first (the scratch comparison tunes itself on the same grid).
    """
    start = time.monotonic()
    out = Path(out)
    held = parse_holdout(holdout, data)
    train_set, test_set = split_by_image(data, held)
    trained = {"calibration": set(train_set.images)}
    if pretrained is not None:
        trained = {"pretraining": read_training_images(pretrained), **trained}
    overlap = require_disjoint(held, trained, allow_overlap)
    unscaled, train_set = train_set, train_set.zscored()
    seen = None
    torch.manual_seed(config.seed)  # a new ridge or a fresh model starts the same way every time
    if pretrained is not None:
        model = load_pretrained(pretrained)
        seen = require_new_person(data.subject, data.person, pretrained, model.config.subjects, allow_seen_person)
        if seen and _is_main():
            print(f"WARNING: {data.subject} is not a new person ({seen}; --allow-seen-person): held-out figures "
                  "do not measure calibration of a new person", flush=True)
        model.train()
        if data.subject not in model.config.subjects:
            model.add_subject(data.subject, data.n_voxels)  # a fresh ridge; everything else starts shared
        if embedder is None and (Path(pretrained) / "embedder.json").exists():
            embedder = json.loads((Path(pretrained) / "embedder.json").read_text())  # same token space
    else:
        model = new_model([data], hidden)
    base, tuning = config, None
    if tune is not None:
        from calibration.tuning import tune as run_tuning
        from calibration.tuning import tuned

        tuning = run_tuning(unscaled, config, tune, pretrained, hidden)  # held-out images are not in train_set
        config = tuned(config, tuning)
    history = train(model, [train_set], config, out=out / "checkpoints", resume=resume, progress=progress)
    evaluation = evaluate(model, test_set.zscored(train_set.mean, train_set.std)) if len(test_set.betas) else {}
    if evaluation and _is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "held_out.json").write_text(json.dumps(evaluation.pop("top5")))
    extra = {"seconds": round(time.monotonic() - start, 1), "source": source,
             "pretrained": str(pretrained) if pretrained is not None else None,
             "held_out_overlap": overlap, "overlap_allowed": bool(allow_overlap and any(overlap.values())),
             "person": data.person, "seen_person": seen,
             "calibration_images_in_pretraining": _in_pretraining(set(train_set.images), trained),
             "tuning": tuning}
    if compare_scratch and pretrained is not None:
        scratch = calibrate(data, out / "scratch", base, None, resume, hidden, progress, embedder, source,
                            holdout=holdout, allow_overlap=allow_overlap, tune=tune)
        extra["scratch"] = json.loads((scratch / "training.json").read_text())["evaluation"]  # whole: see _write_folder
    return _write_folder(model, out, data.subject, train_set, config, history, evaluation, embedder, extra)


def _in_pretraining(images: set[str], trained: dict[str, set[str] | None]) -> dict | None:
    """How many of the calibration hour's training images the pretrained model was trained on too (None:
    no pretrained model, or it does not list its images)."""
    known = trained.get("pretraining")
    return None if known is None else {"images": len(images), "in_pretraining": len(images & known)}
