"""Held-out images stay out of every training set: the check, and the record a model folder keeps.

A pretrained model folder lists the images it was trained on (``training_images.txt``); calibration
holds out a set of the new person's images (the repeated ones by default, as NSD's test images, or
``--holdout``) and refuses to train when any of them is in the pretraining list or its own training
trials, naming how many, unless overlap is allowed on purpose (the report then says so first).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from calibration.data import SubjectData

TRAINING_IMAGES = "training_images.txt"


class OverlapError(ValueError):
    """Held-out images were found in a training set."""


def _write_list(folder: str | Path, name: str, items: Iterable[str]) -> Path:
    """The distinct ``items``, one per line, sorted, into ``folder/name``."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{item}\n" for item in sorted(set(items))))
    return path


def _read_list(folder: str | Path, name: str) -> set[str] | None:
    """What :func:`_write_list` wrote; None when the folder has no such file."""
    path = Path(folder) / name
    return set(path.read_text().split()) if path.exists() else None


def write_training_images(folder: str | Path, images: Iterable[str]) -> Path:
    """The distinct image ids a model was trained on, one per line, sorted."""
    return _write_list(folder, TRAINING_IMAGES, images)


def read_training_images(folder: str | Path) -> set[str] | None:
    """The images a model folder says it was trained on; None when it does not say (a converted
    published checkpoint: MindEye2 kept the shared 1,000 NSD test images out of all its training)."""
    return _read_list(folder, TRAINING_IMAGES)


def repeated_images(data: SubjectData, repeats: int = 2) -> set[str]:
    """Images shown at least ``repeats`` times (NSD's test images are the repeated ones)."""
    ids, counts = np.unique(np.asarray(data.images), return_counts=True)
    return {str(i) for i, c in zip(ids, counts, strict=True) if c >= repeats}


def parse_holdout(spec: str | set[str] | None, data: SubjectData) -> set[str]:
    """``--holdout``: none (the repeated images), ``runs:3,4`` (every image of those runs), ``@FILE`` (ids,
    one per line), ``id,id,...`` or a set of ids. ValueError names what is wrong."""
    if isinstance(spec, set):
        return _shown(set(spec), data)
    if spec is None or spec == "repeated":
        return repeated_images(data)
    if spec.startswith("runs:"):
        if data.runs is None:
            raise ValueError(f"--holdout {spec}: this data does not record which run each trial was in")
        try:
            wanted = {int(r) for r in spec[5:].split(",") if r.strip()}
        except ValueError:
            raise ValueError(f"--holdout {spec}: expected run numbers, e.g. runs:10,11") from None
        missing = wanted - set(int(r) for r in data.runs)
        if missing:
            raise ValueError(f"--holdout {spec}: no trials in run(s) {sorted(missing)} (runs: {sorted(set(data.runs))})")
        return {im for im, r in zip(data.images, data.runs, strict=True) if int(r) in wanted}
    ids = set(Path(spec[1:]).read_text().split()) if spec.startswith("@") else {s.strip() for s in spec.split(",")}
    ids.discard("")
    return _shown(ids, data)


def _shown(ids: set[str], data: SubjectData) -> set[str]:
    unknown = ids - set(data.images)
    if unknown:
        raise ValueError(f"--holdout: {len(unknown)} of {len(ids)} images were never shown, e.g. {sorted(unknown)[0]!r}")
    return ids


def overlap_counts(held_out: set[str], training: dict[str, set[str] | None]) -> dict[str, int | None]:
    """How many held-out images each named training set contains (None: the set is not known)."""
    return {name: None if images is None else len(held_out & images) for name, images in training.items()}


def require_disjoint(held_out: set[str], training: dict[str, set[str] | None], allow_overlap: bool = False
                     ) -> dict[str, int | None]:
    """Overlap counts; OverlapError, one line naming the counts, when any is above zero and not allowed."""
    counts = overlap_counts(held_out, training)
    found = {k: v for k, v in counts.items() if v}
    if found and not allow_overlap:
        where = ", ".join(f"{n} in the {k} set" for k, n in found.items())
        raise OverlapError(f"{sum(found.values())} of the {len(held_out)} held-out images were trained on ({where}); "
                           "held-out figures would measure memory, not generalisation. Hold out other images, or "
                           "pass --allow-overlap (the report then says so in its first line)")
    return counts


# A new person is new: the brains a shared model was trained on (issue 35).
TRAINING_PEOPLE = "training_people.txt"


class SeenPersonError(ValueError):
    """The person to calibrate was in the pretrained model's training."""


def write_training_people(folder: str | Path, people: Iterable[str]) -> Path:
    """Whose brains a model was trained on (a simulated person's seed, a participant label), one a line."""
    return _write_list(folder, TRAINING_PEOPLE, people)


def read_training_people(folder: str | Path) -> set[str] | None:
    """The people a model folder says it was trained on; None when it does not say (older folders)."""
    return _read_list(folder, TRAINING_PEOPLE)


def seen_person(subject: str, person: str | None, pretrained_subjects: list[str], pretrained_people: set[str] | None
                ) -> str | None:
    """Why the person to calibrate is not new to the pretrained model (None: new, as far as it says): the
    same brain, or the same subject name (whose pretrained ridge calibration would take over)."""
    if person is not None and pretrained_people is not None and person in pretrained_people:
        return f"its brain ({person}) was in pretraining"
    if subject in pretrained_subjects:
        return f"a pretraining subject is named {subject!r} (its pretrained ridge would be fine-tuned, not a new one)"
    return None


def require_new_person(subject: str, person: str | None, pretrained: str | Path, pretrained_subjects: list[str],
                       allow: bool = False) -> str | None:
    """The reason a person is not new, when allowed; SeenPersonError, one line, when not."""
    why = seen_person(subject, person, pretrained_subjects, read_training_people(pretrained))
    if why and not allow:
        raise SeenPersonError(f"{subject} is not a new person to {pretrained}: {why}. A model that has seen this "
                              "brain says nothing about a new person's hour. Calibrate a new person, or pass "
                              "--allow-seen-person (the output, training.json and the report then say so first)")
    return why
