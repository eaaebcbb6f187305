"""When may a cached neighbour's answer be served for a request that is not byte-for-byte equal?

Peers serve a semantic hit whenever the cosine similarity passes one fixed threshold, which
replays wrong answers wherever near-equal wording gets another answer. ``LearnedGate`` learns
instead, the way a level's operating point is learned: every labelled *comparison* says, for
one request and its nearest cached neighbour, whether the neighbour's answer agreed with what
the large LM answered for the request itself. A logistic model scores P(agree) from what the
lookup sees (``neighbour_features``: the similarity, the large LM's confidence in the cached
answer, whether the next neighbours back that answer, the request's length), and the gate
serves a hit only at scores where the agreement of the comparisons at or above the score has a
one-sided Wilson lower bound at or above the target.

Comparisons come from two places:

- **Misses that reached the large LM** with a neighbour above ``floor``: free (the large LM ran
  anyway). They cover scores below the current threshold.
- **Verified would-be hits**: a share (``verify_share``) of the requests the gate would serve
  is run through the cascade anyway, to keep measuring what it serves.

Above the threshold only the verified share is compared, so the comparisons alone weigh the
band just below it (every miss) far above the hits themselves, and the threshold stayed higher
than the target needs. So every hit served unverified is kept too, without a verdict: at each
refit the agreement of what a threshold would serve counts the comparisons there as they came
out and each unverified hit at its P(agree), corrected by the comparisons' own residual (a
doubly robust estimate); its Wilson bound runs over the comparisons' count alone (that is
the estimate's variance: the comparisons' residual is extrapolated to every hit). The model is
fit on the comparisons kept (a sliding window of lookups), re-scored at each refit, so the
threshold moves with it.

Two guards keep that extrapolation honest. Each comparison is scored as if left out of the fit
(``_loo_scores``): scored in-sample, the comparisons above a threshold looked better than the
hits served there. And a positive residual is shrunk by n / (n + ``residual_prior``). Without
them the disaster tweets at target 0.95 got 1,542 hits at 3.3% errors on ``bench semcache``'s
first order (the pooled comparisons alone: 1,327), but ten orders of ``bench semcache-sim``
passed the error bound on three order-target runs of twenty; with them, 1,345 hits at 2.5% on
that order, and the bound held on all ten orders at targets 0.90 to 0.99.

Why a model and not a cosine threshold per band of confidence (the first version): on the
disaster-tweet traffic the bands gave 61 semantic hits at target 0.95; a logistic model over
the same two signals and the neighbours' votes serves about five times as many at the same
target (``bench semcache``). An answer the large LM gave at 51% is replayed wrong far more
often than one it gave at 90%, at any similarity, and a neighbour whose own neighbours carry
the other label is an outlier: a threshold on one axis cannot see either.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.operating import wilson_lower, wilson_lower_of

#: What ``neighbour_features`` returns, in order (the model's inputs, and the report's names).
FEATURES = ("similarity", "record", "support", "same_label", "second", "length")

#: Neighbours read per lookup (the nearest is the one whose answer may be served).
NEIGHBOURS = 8

#: Softmax temperature over similarities when the neighbours vote on the nearest's label.
VOTE_TAU = 0.05


@dataclass(frozen=True)
class GateDecision:
    """What the gate says about a request's nearest neighbour."""

    serve: bool  # answer with the neighbour's answer
    verify: bool  # would serve, but run the cascade to check it (a verification sample)
    p: float  # the probability with which a would-be hit is verified
    score: float | None = None  # the model's P(agree), where it has one


MISS = GateDecision(False, False, 0.0)


def neighbour_features(
    sims: Sequence[float],
    labels: Sequence[str | None],
    records: Sequence[float | None],
    length: int,
    n_labels: int | None = None,
) -> np.ndarray:
    """The lookup as the gate's model sees it; neighbours nearest first, at least one.

    ``records`` are the large LM's confidence in each cached answer (None: unknown, as for
    generated text). ``support`` is the neighbours' similarity-weighted belief in the nearest
    one's label: each neighbour with that label lends its confidence, each with another lends
    its doubt spread over the other labels. Without labels (generation) the vote features sit
    at 0.5 and the model leans on the rest.
    """
    s = np.asarray(sims, dtype=np.float64)
    first = labels[0]
    rec = [0.5 if r is None else float(r) for r in records]
    if first is None:
        support = same = 0.5
    else:
        others = max(1, (n_labels or 2) - 1)
        belief = np.array(
            [r if lab == first else (1.0 - r) / others for lab, r in zip(labels, rec, strict=True)]
        )
        w = np.exp((s - s[0]) / VOTE_TAU)
        support = float((w * belief).sum() / w.sum())
        next_ = labels[1:4]
        same = sum(lab == first for lab in next_) / len(next_) if next_ else 0.5
    second = float(s[1]) if len(s) > 1 else 0.0
    return np.array([float(s[0]), rec[0], support, same, second, math.log1p(max(length, 0)) / 5.0])


def _expand(x: np.ndarray) -> np.ndarray:
    """The model's inputs: the features and the similarity's products with the record and
    the support (a close neighbour is worth more when its answer was sure)."""
    x = np.atleast_2d(x)
    return np.column_stack([x, x[:, 0] * x[:, 1], x[:, 0] * x[:, 2]])


class LearnedGate:
    """A threshold on a learned P(agree), held at a target agreement with the large LM."""

    def __init__(
        self,
        target: float = 0.95,
        floor: float = 0.5,
        z: float = 1.28,
        min_samples: int = 30,
        verify_share: float = 0.05,
        window: int = 5000,
        refit_every: int = 10,
        c: float = 1.0,
        residual_prior: float = 100.0,
    ) -> None:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {target}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.target = target
        self.floor = floor
        self.z = z
        self.min_samples = min_samples
        self.verify_share = verify_share
        self.refit_every = refit_every
        self.c = c
        # > 0: a positive residual (comparisons agreeing more than the model says) is shrunk
        # by n / (n + residual_prior) before it lifts the unverified hits' estimate
        self.residual_prior = residual_prior
        self.fixed: float | None = None
        self.rows: deque[tuple[np.ndarray, bool]] = deque(maxlen=window)  # comparisons
        # hits served unverified: what the gate serves, weighed by the model (no verdict); a
        # window of their own, so they never push comparisons out
        self.hits: deque[np.ndarray] = deque(maxlen=window)
        # the fitted model, replaced whole by each refit (requests read it from other
        # threads: one attribute, so a reader never pairs one fit's weights with another's
        # threshold, or checks a threshold that is gone when it compares)
        self.model = _Model()
        self._since = 0  # comparisons since the last refit
        # requests learn in worker threads, the shared log in another: one writer at a time
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float | None:
        """The lowest score served (None: no score has shown the target yet)."""
        return self.model.threshold

    @property
    def support(self) -> int:
        return self.model.support

    @property
    def coef(self) -> np.ndarray | None:
        return self.model.coef

    def score(self, x: np.ndarray) -> float:
        """The model's P(agree) for one lookup."""
        return self.model.score(x)

    def decide(self, x: np.ndarray, draw: float) -> GateDecision:
        """``draw`` is uniform in [0, 1): the verification coin."""
        m = self.model
        if x[0] < self.floor or m.threshold is None:
            return MISS
        score = m.score(x)
        if score < m.threshold:
            return GateDecision(False, False, 0.0, score)
        p = self.verify_share
        return GateDecision(draw >= p, draw < p, p, score)

    def _keep(self, x: np.ndarray, agreed: bool | None) -> bool:
        """Add one row (under the lock); False below the floor. ``agreed`` is None for a hit
        served unverified: it counts in what is served, not in the model's fit."""
        if x[0] < self.floor:
            return False
        x = np.asarray(x, dtype=np.float64)
        if agreed is None:
            self.hits.append(x)
            return True
        self.rows.append((x, bool(agreed)))
        self._since += 1
        return True

    def observe(self, x: np.ndarray, agreed: bool | None, refit: bool = True) -> None:
        """One comparison (``agreed`` True or False), or one unverified served hit (None)."""
        with self._lock:
            # refit at every comparison while few, then every ``refit_every``; a served hit
            # waits for the next comparison's refit
            kept = self._keep(x, agreed)
            few = len(self.rows) < 200
            if kept and refit and agreed is not None and (few or self._since >= self.refit_every):
                self._refit()

    def observe_many(self, rows: Iterable[tuple[np.ndarray, bool | None]]) -> None:
        """Rows read from the shared log: one refit after all of them."""
        with self._lock:
            for x, agreed in rows:
                self._keep(x, agreed)
            self._refit()

    def refit(self) -> None:
        """Fit P(agree) on the window, then the lowest score whose comparisons at or above it
        show the target."""
        with self._lock:
            self._refit()

    def _refit(self) -> None:
        self._since = 0
        if len(self.rows) < self.min_samples:
            self.model = _Model()
            return
        x = np.stack([r[0] for r in self.rows])
        y = np.array([r[1] for r in self.rows])
        ex = _expand(x)
        coef, intercept = _fit(ex, y, self.c)
        model = _Model(coef, intercept)
        hits = np.stack(self.hits) if self.hits else np.empty((0, x.shape[1]))
        # each comparison scored as if left out of the fit: scored by the model fit on it, the
        # comparisons above a threshold agree more than the hits served at the same scores
        scores = np.concatenate([_loo_scores(ex, y, coef, intercept, self.c), model.scores(hits)])
        known = np.arange(len(scores)) < len(x)
        agreed = np.concatenate([y, np.zeros(len(hits), dtype=bool)])
        threshold, support, estimate = self._operating_point(scores, known, agreed)
        self.model = _Model(coef, intercept, threshold, support, estimate)

    def _operating_point(
        self, scores: np.ndarray, known: np.ndarray, agreed: np.ndarray
    ) -> tuple[float | None, int, float | None]:
        """The lowest score at which what would be served shows the target: (threshold, the
        comparisons at or above it, the estimated agreement there).

        Served at a threshold would be every lookup at or above it. The comparisons there
        count as they came out; each unverified hit counts as its P(agree), corrected by how
        far the comparisons at or above the threshold sit from their own P(agree) (a doubly
        robust estimate: the verified share keeps the model honest where it serves). Pooling
        the comparisons alone would weigh the band below the threshold, where every miss is
        compared but only a few hits are, far above the hits themselves. The bound is
        Wilson's at that estimate over the comparisons' count: unverified hits add no
        evidence of their own."""
        order = np.argsort(-scores, kind="stable")
        s, k, a = scores[order], known[order], agreed[order] & known[order]
        n_known = np.cumsum(k)
        agree = np.cumsum(a)
        p_known = np.cumsum(np.where(k, s, 0.0))
        n_hits = np.cumsum(~k)
        p_hits = np.cumsum(np.where(k, 0.0, s))
        residual = (agree - p_known) / np.maximum(n_known, 1)
        if self.residual_prior > 0:
            shrink = n_known / (n_known + self.residual_prior)
            residual = np.where(residual > 0, residual * shrink, residual)
        est = np.clip((agree + p_hits + n_hits * residual) / (n_known + n_hits), 0.0, 1.0)
        n = np.maximum(n_known, 1).astype(np.float64)
        lower = wilson_lower_of(est, n, self.z)
        # ties share a score: a threshold sits below the last of them
        last_of_tie = np.append(s[1:] != s[:-1], True)
        ok = np.flatnonzero((n_known >= self.min_samples) & last_of_tie & (lower >= self.target))
        if not len(ok):
            return None, 0, None
        i = ok[-1]
        return float(s[i]), int(n_known[i]), float(est[i])

    def summary(self) -> dict[str, Any]:
        """The threshold, the agreement of the comparisons at and above it (all of them while
        there is none) with a 95% interval, and the model's weights."""
        with self._lock:
            rows = list(self.rows)
            served = len(self.hits)
        m = self.model
        if m.threshold is not None and m.coef is not None and rows:
            above = m.scores(np.stack([x for x, _ in rows])) >= m.threshold
            chosen = [r for r, keep in zip(rows, above, strict=True) if keep]
        else:
            chosen = rows
        n, a = len(chosen), sum(r[1] for r in chosen)
        sims = [float(x[0]) for x, _ in chosen]
        out: dict[str, Any] = {
            "threshold": m.threshold,
            "comparisons": n,
            "window": len(rows),
            "unverified_hits": served,
            "estimated_agreement": m.estimate,
            "agreement": a / n if n else None,
            "ci95": [wilson_lower(a, n, 1.96), 1.0 - wilson_lower(n - a, n, 1.96)] if n else None,
            "verify": self.verify_share if m.threshold is not None else 0.0,
            "min_similarity": round(min(sims), 4) if sims and m.threshold is not None else None,
        }
        if m.coef is not None:
            names = [*FEATURES, "similarity*record", "similarity*support"]
            out["weights"] = {k: round(float(v), 3) for k, v in zip(names, m.coef, strict=True)}
        return out


@dataclass(frozen=True)
class _Model:
    """One refit's outcome: logistic weights (None: no model yet) and the score threshold
    with the comparisons behind it."""

    coef: np.ndarray | None = None
    intercept: float = 0.0
    threshold: float | None = None
    support: int = 0
    estimate: float | None = None  # the served hits' estimated agreement at the threshold

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(agree) for each row of features (a product: no library call per request)."""
        if self.coef is None:
            return np.zeros(len(np.atleast_2d(x)))
        return _sigmoid(_expand(x) @ self.coef + self.intercept)

    def score(self, x: np.ndarray) -> float:
        """P(agree) for one lookup."""
        return float(self.scores(x)[0])


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Logistic regression; with one class only, the intercept alone (a constant score at
    that class's smoothed rate, so all-agreeing evidence can still open the gate)."""
    if y.all() or not y.any():
        p = (y.sum() + 0.5) / (len(y) + 1.0)
        return np.zeros(x.shape[1]), math.log(p / (1.0 - p))
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=c, max_iter=500).fit(x, y)
    return m.coef_[0].astype(np.float64), float(m.intercept_[0])


def _loo_scores(
    x: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, c: float
) -> np.ndarray:
    """Each row's P(agree) from the fit without it: one Newton step back from the full fit
    (exact to about 1e-4 against refitting, for one matrix inverse instead of a fit per row).

    The fit has seen each comparison's verdict and leans its score toward it, most at the
    scores where a threshold is chosen; unverified hits get no such help, so in-sample scores
    made the comparisons above a threshold look better than what it serves (order 6 of
    ``bench semcache-sim``: 93.8% against 90.7%, and 6.8% errors at target 0.95)."""
    xs = np.column_stack([x, np.ones(len(x))])
    eta = np.clip(xs @ np.append(coef, intercept), -50.0, 50.0)
    p = _sigmoid(eta)
    if not coef.any():  # one class only: the intercept alone, nothing fitted to a row
        return p
    w = p * (1.0 - p)
    penalty = np.eye(xs.shape[1]) / c  # sklearn's L2 on the weights, none on the intercept
    penalty[-1, -1] = 0.0
    inverse = np.linalg.pinv(xs.T @ (xs * w[:, None]) + penalty)
    q = np.einsum("ij,jk,ik->i", xs, inverse, xs)
    eta_out = eta - q * (y - p) / np.maximum(1.0 - w * q, 1e-6)
    return _sigmoid(eta_out)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -50.0, 50.0)))


class FixedGate:
    """Serve every neighbour at or above one cosine, unverified: what peers ship (the
    benchmark's baselines, or an operator's explicit choice)."""

    def __init__(self, threshold: float, floor: float = 0.5) -> None:
        self.fixed: float | None = threshold
        self.threshold: float | None = threshold
        self.floor = min(floor, threshold)
        self.target: float | None = None

    def decide(self, x: np.ndarray, draw: float) -> GateDecision:
        return GateDecision(True, False, 0.0) if x[0] >= self.threshold else MISS

    def observe(self, x: np.ndarray, agreed: bool | None, refit: bool = True) -> None:
        """A fixed gate learns nothing (its comparisons still reach the counters)."""

    def observe_many(self, rows: Iterable[tuple[np.ndarray, bool | None]]) -> None:
        """Nothing to learn."""

    def summary(self) -> dict[str, Any]:
        return {"threshold": self.fixed, "comparisons": 0, "agreement": None, "ci95": None}
