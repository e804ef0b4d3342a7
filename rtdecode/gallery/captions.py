"""Captions in the demo's stand-in world: what the painter knows, and a small captioner that learns it.

The built-in images are painted (rtdecode.gallery.painted), so each one's caption is written from what
its painter drew (kind, sky, counts, colours), not guessed. The stand-in captioner is the demo's
counterpart of MindEye2's GIT captioner: it reads a trial's predicted tokens (the stand-in token space,
not CLIP) and says what the painter would have said, slot by slot (a ridge map from the flattened
tokens to one score per value of each slot; the caption is the template of the best values). It is
trained on the calibration hour's images only: :func:`fit_captioner` refuses any image of the built-in
test pool (rtdecode.gallery.splits), which holds every real-time and held-out image, so it never sees
an image it is scored on. Its captions are those of a model of a few thousand numbers: labelled so.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from rtdecode.gallery.builtin import StimulusSet, index_of
from rtdecode.gallery.painted import HAIR, KINDS, PETALS, SKIES, paint
from rtdecode.gallery.splits import is_test_image

MARKER = "standin_captioner.json"
WEIGHTS = "standin_captioner.safetensors"
COUNTS = ("0", "1", "2", "3", "4", "5", "6", "many")
# Every slot a caption is made of, with its values ('' where a kind has no such thing).
SLOTS: dict[str, tuple[str, ...]] = {"kind": KINDS, "sky": ("", *SKIES), "count": ("", *COUNTS),
                                     "colour": ("", *PETALS, *HAIR), "extra": ("no", "yes")}


def count_word(n: int) -> str:
    """A painted count as the captioner's value (7 and more: 'many')."""
    return COUNTS[min(int(n), len(COUNTS) - 1)]


def facts_of(image: str) -> dict[str, str]:
    """The painter's facts of a built-in image (``sim-NNNNN``), every slot filled; ValueError otherwise."""
    return dict(_facts(index_of(image)))


@lru_cache(maxsize=2048)
def _facts(index: int) -> tuple[tuple[str, str], ...]:
    s = StimulusSet()
    if not 0 <= index < s.n:
        raise ValueError(f"sim-{index:05d}: not in the built-in set of {s.n} images")
    raw: dict = {}
    # At the set's own size: the painter's draws depend on it (a skyline draws one value per pixel column).
    paint(s.kind(index), np.random.default_rng([s.seed, index]), s.size, raw)
    facts = {"kind": raw["kind"], "sky": raw.get("sky", ""), "colour": raw.get("colour", ""),
             "count": count_word(raw["count"]) if "count" in raw else "", "extra": "yes" if raw.get("extra") else "no"}
    return tuple(facts.items())


def painted_caption(image: str) -> str:
    """The caption of a built-in image, from what its painter drew."""
    return caption_of(facts_of(image))


def _sky(f: dict) -> str:
    return {"blue": "a blue sky", "sunset": "an orange sunset sky", "grey": "a grey sky",
            "deep blue": "a deep blue sky"}.get(f.get("sky", ""), "the sky")


def _n(f: dict, one: str, many: str) -> str:
    c = f.get("count", "") or "many"
    words = {"0": "no", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "many": "many"}
    return f"{words[c]} {one if c == '1' else many}"


def caption_of(f: dict) -> str:
    """The sentence for a set of facts (a kind's template; slots it has no use for are ignored)."""
    kind, yes = f["kind"], f.get("extra") == "yes"
    if kind == "landscape":
        return f"a green landscape with {_n(f, 'tree', 'trees')} under {_sky(f)}" + (" and the sun" if yes else "")
    if kind == "forest":
        return f"a forest of {_n(f, 'tree', 'trees')} under {_sky(f)}" + (" and the sun" if yes else "")
    if kind == "desert":
        return f"a sandy desert with {_n(f, 'cactus', 'cacti')} under {_sky(f)}" + (" and the sun" if yes else "")
    if kind == "seascape":
        return f"a sailing boat on the sea under {_sky(f)}" + (" near a beach" if yes else "")
    if kind == "city":
        return f"a city skyline of {_n(f, 'building', 'buildings')} under {_sky(f)}"
    if kind == "still_life":
        return f"a still life of {_n(f, 'fruit', 'fruits')} on a table" + (" beside a vase" if yes else "")
    if kind == "flower":
        colour = f.get("colour") or "bright"
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} flower with {_n(f, 'petal', 'petals')} on green"
    if kind == "face":
        return f"a portrait of a smiling person with {f.get('colour') or 'dark'} hair"
    if kind == "house":
        return f"a house with a red roof on a green field under {_sky(f)}" + (" and a tree" if yes else "")
    return "a night sky with stars and a " + ("crescent moon" if yes else "full moon")


class StandinCaptioner:
    """Predicted stand-in tokens (N, T, D) -> captions: per slot, a ridge map from the flattened,
    standardised tokens to one score per value; the best value of each slot fills the kind's template."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, slots: dict[str, tuple[str, ...]],
                 trained_on: list[str]) -> None:
        self.mean, self.scale, self.weights = mean, scale, weights  # weights: (features + 1, sum of slot sizes)
        self.slots, self.trained_on = slots, trained_on

    def facts(self, tokens) -> list[dict[str, str]]:
        x = np.asarray(tokens.float().cpu().numpy() if hasattr(tokens, "cpu") else tokens, np.float32)
        x = (x.reshape(len(x), -1) - self.mean) / self.scale
        scores = np.concatenate([x, np.ones((len(x), 1), np.float32)], 1) @ self.weights
        out, at = [{} for _ in range(len(x))], 0
        for name, values in self.slots.items():
            best = scores[:, at:at + len(values)].argmax(1)
            for row, b in zip(out, best, strict=True):
                row[name] = values[int(b)]
            at += len(values)
        return out

    def caption(self, tokens) -> list[str]:
        """One caption per token set (a torch tensor on any device, or an array)."""
        return [caption_of(f) for f in self.facts(tokens)]

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "scale": self.scale, "weights": self.weights}, str(folder / WEIGHTS))
        (folder / MARKER).write_text(json.dumps({"slots": self.slots, "trained_on": self.trained_on,
                                                 "note": "the demo's stand-in captioner (not GIT): "
                                                         "rtdecode.gallery.captions"}, indent=1))
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path) -> StandinCaptioner:
        """Load strictly: the three arrays, with the shapes the slots say; ValueError names what is wrong."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        info = json.loads((folder / MARKER).read_text())
        arrays = load_file(str(folder / WEIGHTS))
        if set(arrays) != {"mean", "scale", "weights"}:
            raise ValueError(f"{folder / WEIGHTS}: expected arrays mean, scale, weights; got {sorted(arrays)}")
        slots = {k: tuple(v) for k, v in info["slots"].items()}
        n_out, n_in = sum(len(v) for v in slots.values()), arrays["mean"].shape[-1]
        if arrays["weights"].shape != (n_in + 1, n_out) or arrays["scale"].shape != arrays["mean"].shape:
            raise ValueError(f"{folder / WEIGHTS}: weights {arrays['weights'].shape}, expected {(n_in + 1, n_out)} "
                             f"for {n_in} token values and the slots of {folder / MARKER}")
        return cls(arrays["mean"], arrays["scale"], arrays["weights"], slots, list(info.get("trained_on", [])))


def is_standin_captioner(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def fit_captioner(images: list[str], tokens: np.ndarray, ridge: float = 10.0) -> StandinCaptioner:
    """Train on built-in images and their tokens (N, T, D). ValueError when any image is of the test pool
    (held-out and real-time images): the captioner is trained on the calibration hour's other images only."""
    test = sorted({i for i in images if is_test_image(i)})
    if test:
        raise ValueError(f"the captioner would be trained on {len(test)} test-pool image(s) (e.g. {test[0]}); it is "
                         "trained on calibration images outside the test pool only")
    x = np.asarray(tokens, np.float64).reshape(len(images), -1)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xs = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], 1)
    targets = []
    for name, values in SLOTS.items():
        one_hot = np.zeros((len(images), len(values)))
        for i, image in enumerate(images):
            one_hot[i, values.index(facts_of(image)[name])] = 1.0
        targets.append(one_hot)
    y = np.concatenate(targets, 1)
    penalty = ridge * np.eye(xs.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(xs.T @ xs + penalty, xs.T @ y)
    return StandinCaptioner(mean.astype(np.float32), scale.astype(np.float32), weights.astype(np.float32), dict(SLOTS),
                            sorted(set(images)))
