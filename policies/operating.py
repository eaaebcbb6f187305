"""The quality knob: keep a level's agreement with the large LM at or above a target.

Exploration sends a uniform sample of the items that reach a level on to the large LM whatever
the level would have done, so for those items we know the level's deferral score *and* whether
its answer agrees with the large LM. Among them, the items scored below a threshold are an
unbiased sample of what the level would answer at that threshold; the operating point is the
largest threshold whose agreement (a one-sided Wilson lower bound, z = 0.5 by default, so
small samples answer less) stays at or above the target: the fewest large-LM calls at the
asked-for quality.

Items the level deferred on its own reach the large LM too, every one of them. They are no
uniform sample (they are the level's least confident items), but whether the level's answer
agrees depends on the item only through its score as far as the deferral could see, so they
say how likely agreement is *at a given score*. The estimate is therefore post-stratified:
P(agree | score) is an isotonic fit on every labelled item (explored and deferred), averaged
over the explored items' scores, which give the traffic's mix. Deferrals are many and recent
right where the threshold sits; the explored items alone are few (a 1% floor) and, on a young
level, mostly from its first few hundred items, scored by a level that has learned since.
The fit near the threshold thus follows the level as it is now, the mix of scores below it
comes from a longer past. This holds only where the deferral saw the score the window keeps:
``ThresholdPolicy`` on the last cheap level (the learner passes nothing else as deferred);
policies whose score is learned keep explored items only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
from sklearn.isotonic import IsotonicRegression


def wilson_lower(successes: float, n: float, z: float) -> float:
    if n <= 0:
        return 0.0
    return float(wilson_lower_of(np.float64(successes / n), np.float64(n), z))


def wilson_lower_of(p: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Wilson's lower bound of a proportion ``p`` over ``n`` > 0, elementwise: a threshold
    search scores every candidate at once."""
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / denom


class OperatingPoint:
    """A threshold on a deferral score chosen from explored samples.

    Samples keep the policy's input vector, not its score: a learned policy's scores move as
    it learns, so every refit re-scores the window with the policy as it is now.
    """

    def __init__(
        self,
        target: float,
        window: int = 1000,
        z: float = 0.5,
        min_samples: int = 30,
        initial: float = 0.0,
        prior_strength: float = 0.0,
        prior: Callable[[np.ndarray], np.ndarray] | None = None,
        enter_z: float | None = None,
        min_share: float = 0.0,
    ) -> None:
        self.target = target  # in (0, 1]: the policy checked it (policies.base.check_target)
        self.z = z
        # hysteresis: a level that does not answer yet (nothing, or less than ``min_share``)
        # must show the target at ``enter_z`` to start; one that answers keeps it at ``z``
        self.enter_z = z if enter_z is None else max(z, enter_z)  # never easier to start
        self.min_share = min_share
        self.min_samples = min_samples
        # an informative start: P(agree | score) as the level's own calibration says, worth
        # ``prior_strength`` explored samples (0: none; the level answers nothing until it
        # has ``min_samples`` of its own)
        self.prior_strength = prior_strength
        self.prior = prior
        self.samples: deque[tuple[np.ndarray, float]] = deque(maxlen=window)  # explored
        self.deferred: deque[tuple[np.ndarray, float]] = deque(maxlen=window)
        self.threshold = initial  # answer when score < threshold; 0.0 answers nothing
        self.answer_share = 0.0  # share of the explored samples the threshold answers
        # the share the estimate's upper bound would answer: what the level may yet answer
        self.hoped_share = 1.0
        self._scores = np.zeros(0)
        self._p_agree = np.zeros(0)  # P(agree | score) at each explored sample

    def observe(self, x: np.ndarray, agreed: bool, deferred: bool = False) -> None:
        """A labelled item: an explored one (a uniform sample of the level's traffic) or,
        with ``deferred``, one the level deferred on its own (evidence at its score only)."""
        kept = (np.asarray(x, dtype=np.float32), float(agreed))
        (self.deferred if deferred else self.samples).append(kept)

    def _fit(self, score: Callable[[np.ndarray], np.ndarray]) -> None:
        """Score the explored samples and estimate P(agree | score) at each of them."""
        x = np.stack([v for v, _ in self.samples])
        self._scores = np.asarray(score(x), dtype=np.float64)
        agreed = np.array([a for _, a in self.samples])
        if not self.deferred:
            self._p_agree = agreed
            return
        dx = np.stack([v for v, _ in self.deferred])
        s = np.concatenate([self._scores, np.asarray(score(dx), dtype=np.float64)])
        a = np.concatenate([agreed, [g for _, g in self.deferred]])
        finite = np.isfinite(s)  # an infinite score (nothing to score) is never answered
        self._p_agree = agreed.copy()
        if finite.sum() < 2:
            return
        iso = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(s[finite], a[finite])
        inside = np.isfinite(self._scores)
        self._p_agree[inside] = iso.predict(self._scores[inside])

    @property
    def has_prior(self) -> bool:
        return self.prior is not None and self.prior_strength > 0

    def prior_threshold(self, z: float | None = None) -> float:
        """Where the prior alone meets the target: the largest score whose own prior agreement,
        worth ``prior_strength`` samples, has its lower bound at the target. Every item answered
        below it has at least that prior agreement, whatever the mix of scores."""
        if not self.has_prior:
            return 0.0
        assert self.prior is not None
        grid = np.linspace(0.0, 1.0, 1001)
        p0 = np.asarray(self.prior(grid), dtype=np.float64)
        m = self.prior_strength
        z, t = self.z if z is None else z, self.target
        ok = [g for g, p in zip(grid, p0, strict=True) if wilson_lower(m * p, m, z) >= t]
        return float(max(ok)) if ok else 0.0

    def refit(self, score: Callable[[np.ndarray], np.ndarray]) -> float:
        """Largest threshold whose lower-bound agreement meets the target (0: answer none).

        With a prior, the bound is a posterior's from the first sample on: each cut's explored
        items count with ``prior_strength`` pseudo-samples at their mean prior agreement, so
        the level's own samples take over as they come; before any, the prior alone sets the
        threshold. Without one, a level answers nothing until it has ``min_samples``."""
        m = self.prior_strength if self.has_prior else 0.0
        z = self.z if self.answering else self.enter_z
        if not self.samples:
            self.hoped_share = 1.0
            return self._prior_only(z)
        self._fit(score)
        order = np.argsort(self._scores, kind="stable")
        scores, p_agree = self._scores[order], self._p_agree[order]
        self.hoped_share = self._hoped(scores, p_agree)
        if not m and len(self.samples) < self.min_samples:
            return self._prior_only(z)
        cum = np.cumsum(p_agree)
        if m:
            assert self.prior is not None
            p0 = np.asarray(self.prior(np.where(np.isfinite(scores), scores, 1.0)), np.float64)
            prior_mean = np.cumsum(p0) / np.arange(1, len(scores) + 1)
        best = 0.0
        for i in range(len(scores)):
            # items 0..i answered: threshold just above scores[i]
            if i + 1 < len(scores) and scores[i + 1] == scores[i]:
                continue
            agree, n = cum[i], i + 1.0
            if m:
                agree, n = agree + m * prior_mean[i], n + m
            if wilson_lower(agree, n, z) >= self.target:
                nxt = scores[i + 1] if i + 1 < len(scores) else scores[i] + 1e-6
                best = float((scores[i] + nxt) / 2)
        if m and scores[0] >= (prior_cut := self.prior_threshold(z)) > best:
            best = prior_cut  # no explored item answered yet: the prior alone still holds
        self.threshold = best
        self.answer_share = float((self._scores < best).mean())
        return best

    @property
    def answering(self) -> bool:
        """Whether the threshold answers at least ``min_share`` of the explored samples."""
        return self.threshold > 0 and self.answer_share >= self.min_share

    def _prior_only(self, z: float) -> float:
        """Too few samples of its own: the prior alone sets the threshold (none: 0)."""
        self.threshold = self.prior_threshold(z)
        self.answer_share = 1.0 if self.threshold > 0 else 0.0  # nothing seen to say less
        return self.threshold

    def _hoped(self, scores: np.ndarray, p_agree: np.ndarray) -> float:
        """The largest share of the explored samples (``scores`` sorted, ``p_agree`` in their
        order) whose upper-bound agreement (the same z, no prior) meets the target: what the
        level may still answer once it has the samples to show it. A young level with few
        samples has a wide bound and may answer much; one plainly below the target answers
        nothing even optimistically."""
        n = np.arange(1.0, len(scores) + 1)
        upper = 1.0 - wilson_lower_of(1.0 - np.cumsum(p_agree) / n, n, self.z)
        cut = np.append(scores[1:] != scores[:-1], True) & (upper >= self.target)
        cut &= np.isfinite(scores)
        return float((np.flatnonzero(cut)[-1] + 1) / len(scores)) if cut.any() else 0.0

    def rescore(self, score: Callable[[np.ndarray], np.ndarray]) -> None:
        """Score the kept samples with the policy as loaded, without moving the threshold: a
        process that adopts a published version (and never refits) can then report
        ``estimate`` for the threshold it serves."""
        if self.samples:
            self._fit(score)
            self.answer_share = float((self._scores < self.threshold).mean())
        else:
            self._scores, self._p_agree = np.zeros(0), np.zeros(0)

    def estimate(self) -> dict[str, float | int | None]:
        """Agreement among explored items the level answers at the current threshold."""
        n_all = len(self._scores)
        if not n_all:
            return {
                "n": 0,
                "agreement": None,
                "ci95_low": None,
                "ci95_high": None,
                "threshold": self.threshold,
            }
        inside = self._scores < self.threshold
        n = int(inside.sum())
        agree = float(self._p_agree[inside].sum()) if n else 0.0
        return {
            "n": n,
            "agreement": agree / n if n else None,
            "ci95_low": wilson_lower(agree, n, 1.96) if n else None,
            "ci95_high": 1.0 - wilson_lower(n - agree, n, 1.96) if n else None,
            "threshold": self.threshold,
            "answer_share": n / n_all,
        }

    def state(self) -> dict[str, np.ndarray]:
        out = {
            "op_threshold": np.array([self.threshold], dtype=np.float64),
            "op_hoped": np.array([self.hoped_share], dtype=np.float64),
        }
        for prefix, kept in (("op", self.samples), ("op_deferred", self.deferred)):
            if kept:
                out[f"{prefix}_x"] = np.stack([v for v, _ in kept]).astype(np.float32)
                out[f"{prefix}_agreed"] = np.array([a for _, a in kept], dtype=np.float32)
        return out

    def load_state(self, a: dict[str, np.ndarray]) -> None:
        """Adopt a version's windows (both replaced: an empty one is written as absent)."""
        if "op_threshold" not in a:
            return
        for prefix, kept in (("op", self.samples), ("op_deferred", self.deferred)):
            kept.clear()
            if f"{prefix}_x" in a:
                for v, g in zip(a[f"{prefix}_x"], a[f"{prefix}_agreed"], strict=True):
                    kept.append((np.asarray(v, dtype=np.float32), float(g)))
        self.threshold = float(a["op_threshold"][0])
        if "op_hoped" in a:  # versions published before it existed lack it
            self.hoped_share = float(a["op_hoped"][0])
