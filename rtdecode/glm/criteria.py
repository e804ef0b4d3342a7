"""What the GLM tuning scores its choices by (docs/glm.md): one number per voxel for a set of betas.

Two criteria, both on training trials only (trials of held-out images score nothing and teach nothing):

- :class:`RepeatCriterion`: how well betas of the same image agree across its presentations, which lie in
  different runs (issue 20). Needs repeated training images.
- :class:`EncodingCriterion` (issue 32): how well each voxel's betas in one run are predicted from the images
  shown, by a ridge map from image features to betas fitted on the other runs. It needs no repeats, so it
  also tunes when the repeated images are the held-out ones (calibrate's default). A member, pool or count
  that makes betas carry more of the stimulus and less of the noise (neighbouring trials' responses, slow
  drifts: neither can be predicted from this trial's image) raises it.

Each gives ``halves(betas)``: the score on two disjoint halves of the evidence (for choosing how much to
pool, one half choosing for the other) and on all of it; and ``score(betas)``: on all of it.
"""

from __future__ import annotations

import numpy as np

from rtdecode.glm.denoise import repeat_pairs, repeat_reliability

MIN_PAIRS = 10  # fewer repeat pairs than this and repeat reliability decides nothing
PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0)  # ridge penalty, relative to the mean of the feature kernel's diagonal


class RepeatCriterion:
    """Repeat reliability of betas over pairs of presentations of the same scored image."""

    name = "repeat reliability"

    def __init__(self, images: list[str], seed: int = 0) -> None:
        """``images``: what each trial showed, held-out trials already relabelled as unique."""
        self.pairs = repeat_pairs(images)
        repeated = sorted({images[i] for i in self.pairs[:, 0]})
        rng = np.random.default_rng(seed)
        half = {img for img, h in zip(repeated, rng.permutation(len(repeated)) % 2, strict=True) if h}
        self.in_a = np.array([images[i] in half for i in self.pairs[:, 0]], bool)

    @property
    def usable(self) -> bool:
        return len(self.pairs) >= MIN_PAIRS

    def describe(self) -> str:
        return f"{self.name} over {len(self.pairs)} pairs of repeated training images"

    def halves(self, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per voxel: reliability on half the repeated images, on the other half, on all of them."""
        return (repeat_reliability(betas, self.pairs[self.in_a]), repeat_reliability(betas, self.pairs[~self.in_a]),
                repeat_reliability(betas, self.pairs))

    def score(self, betas: np.ndarray) -> np.ndarray:
        return repeat_reliability(betas, self.pairs)


class EncodingCriterion:
    """Cross-validated encoding score: each scored trial's beta predicted by a ridge map from image features,
    fitted on the scored trials of the other runs (leave one run out); per voxel, the correlation of
    predicted and estimated betas over the scored trials. Betas are centred per run first (a run's offset
    is not the image's doing). The halves are the runs taken alternately."""

    name = "cross-validated encoding score"

    def __init__(self, features: np.ndarray, runs: np.ndarray, scored: np.ndarray) -> None:
        """``features`` (scored trials, ...): the image features of the scored trials, in trial order;
        ``runs`` (trials,): each trial's run; ``scored`` (trials,) bool: the trials that may be used."""
        self.scored = np.flatnonzero(np.asarray(scored, bool))
        f = np.asarray(features, float).reshape(len(self.scored), -1)
        if not np.isfinite(f).all():
            raise ValueError("image features for the GLM tuning: expected finite numbers, got NaN or inf")
        self.runs = np.asarray(runs)[self.scored]
        self.folds = sorted(set(self.runs.tolist()))
        if len(self.folds) < 2:
            raise ValueError(f"the encoding criterion needs scored trials in at least 2 runs, got {len(self.folds)}")
        self._features = f
        self.in_a = np.isin(self.runs, self.folds[::2])
        self.penalty: float | None = None
        self._maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    usable = True

    def describe(self) -> str:
        extra = "" if self.penalty is None else f", ridge penalty {self.penalty:g}"
        return (f"{self.name} (image features -> betas, leave one of {len(self.folds)} runs out, "
                f"{len(self.scored)} training trials{extra})")

    def _set_penalty(self, penalty: float) -> None:
        """Each fold's map from the training trials' centred betas to the test run's predictions."""
        self.penalty, self._maps = penalty, []
        for run in self.folds:
            test, train = np.flatnonzero(self.runs == run), np.flatnonzero(self.runs != run)
            f = self._features - self._features[train].mean(0)  # centred on what the fold may see
            k_train = f[train] @ f[train].T
            ridge = penalty * float(np.trace(k_train)) / len(train)
            # The dual ridge: predictions = K(test, train) (K(train, train) + a I)^-1 B(train).
            hat = np.linalg.solve(k_train + ridge * np.eye(len(train)), f[train] @ f[test].T).T
            self._maps.append((test, train, hat))

    def _centred(self, betas: np.ndarray) -> np.ndarray:
        b = np.asarray(betas, float)[self.scored]
        out = np.empty_like(b)
        for run in self.folds:
            rows = self.runs == run
            out[rows] = b[rows] - b[rows].mean(0)
        return out

    def _predict(self, b: np.ndarray) -> np.ndarray:
        pred = np.empty_like(b)
        for test, train, hat in self._maps:
            pred[test] = hat @ b[train]
        return pred

    @staticmethod
    def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a - a.mean(0), b - b.mean(0)
        return np.sum(a * b, 0) / np.maximum(np.sqrt(np.sum(a * a, 0) * np.sum(b * b, 0)), 1e-12)

    def choose_penalty(self, betas: np.ndarray) -> float:
        """The penalty whose predictions are best on ``betas`` (mean of the voxels' positive scores: voxels
        without a response prefer no map at all and must not decide); kept for every later score."""
        b = self._centred(betas)
        best, best_score = PENALTIES[0], -np.inf
        for penalty in PENALTIES:
            self._set_penalty(penalty)
            s = float(np.clip(self._corr(self._predict(b), b), 0, None).mean())
            if s > best_score:
                best, best_score = penalty, s
        self._set_penalty(best)
        return best

    def halves(self, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per voxel: the score on the trials of half the runs, of the other half, of all of them."""
        if self.penalty is None:
            self.choose_penalty(betas)
        b = self._centred(betas)
        pred = self._predict(b)
        return (self._corr(pred[self.in_a], b[self.in_a]), self._corr(pred[~self.in_a], b[~self.in_a]),
                self._corr(pred, b))

    def score(self, betas: np.ndarray) -> np.ndarray:
        return self.halves(betas)[2]
