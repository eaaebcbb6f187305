"""Deferral rules for generated text (Gupta et al., ICLR 2024), selectable per task.

Simple rules threshold one statistic of the small LM's token log-probabilities (higher score
= more reason to defer): ``chow_sum`` (minus the sequence log-likelihood: it mostly measures
length), ``chow_average`` (minus the mean), ``chow_quantile`` (minus the alpha-quantile) and
``entropy_mean`` (mean step entropy). Learned rules predict whether the small answer is
acceptable (as judged against the large LM's answer by the task's quality measure):
``posthoc_quantile`` over the quantile features, ``posthoc_embed`` adding a sentence
embedding of the prompt. Both refit a logistic regression on every demonstration so far.

Every rule takes either a fixed ``threshold`` on its score or a ``target_agreement``: the
share of answered items that must be acceptable, held online from exploration samples.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression

from policies.base import Decision, Features, Policy, PolicyError, register
from policies.explore import Explorer
from policies.features import (
    ALPHAS,
    chow_average,
    chow_quantile,
    chow_sum,
    entropy_mean,
    quantile_vector,
)
from policies.operating import OperatingPoint


class _ScoreRule(Policy):
    """A rule with a deferral score, a fixed threshold or an online operating point."""

    def __init__(
        self,
        threshold: float | None = None,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        warmup: int = 0,
    ) -> None:
        if threshold is None and target_agreement is None:
            raise PolicyError(f"{self.kind}: give a threshold or a target_agreement")
        self.threshold = None if threshold is None else float(threshold)
        self.op = OperatingPoint(target_agreement) if target_agreement is not None else None
        self.explorer = Explorer.for_policy(self.op is not None, beta, explore_floor, warmup)
        self.learned = self.op is not None

    def inputs(self, f: Features) -> np.ndarray:
        """What the operating point keeps per sample (rescored at every refit)."""
        return np.array([self.score(f)], dtype=np.float32)

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0]

    def decide(self, features: Features) -> Decision:
        s = self.score(features)
        if self.op is not None:
            defer = s >= self.op.threshold if self.op.samples else True
        else:
            assert self.threshold is not None
            defer = s > self.threshold
        return Decision(defer=defer, score=s, explore=False)

    def update(
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        self.explorer.seen += 1
        # explored items only: learned scores move (as in OCLPolicy.update), and an item with
        # nothing to score defers whatever its window would say
        if self.op is not None and explored:
            self.op.observe(self.inputs(features), not wrong)
            self.op.refit(self.score_batch)

    def params(self) -> dict[str, float]:
        out: dict[str, float] = {"explore_probability": self.explorer.probability}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.op is not None:
            out["target_agreement"] = self.op.target
            out["operating_threshold"] = self.op.threshold
        return out

    def set_params(self, **params: float) -> None:
        unknown = set(params) - {"threshold", "target_agreement"}
        if unknown:
            raise PolicyError(f"{self.kind} has no parameter(s) {sorted(unknown)}")
        if "threshold" in params:
            v = float(params["threshold"])
            if not math.isfinite(v):
                raise PolicyError(f"threshold must be a finite number, got {params['threshold']}")
            self.threshold = v
        if "target_agreement" in params:
            t = float(params["target_agreement"])
            if not 0.0 < t <= 1.0:
                raise PolicyError(f"target_agreement must be in (0, 1], got {t}")
            if self.op is None:
                self.op = OperatingPoint(t)
                self.explorer.keep_target_floor()
                self.learned = True
            else:
                self.op.target = t
            self.op.refit(self.score_batch)

    def report(self) -> dict[str, object]:
        return {"agreement_estimate": self.op.estimate()} if self.op else {}

    def state(self) -> dict[str, np.ndarray]:
        out = {"seen": np.array([self.explorer.seen], dtype=np.int64)}
        if self.op is not None:
            out.update(self.op.state())
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "seen" in arrays:
            self.explorer.seen = int(arrays["seen"][0])
        if self.op is not None:
            self.op.load_state(arrays)
            self.op.rescore(self.score_batch)


@register("chow_sum")
class ChowSum(_ScoreRule):
    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        # no log-probabilities (an endpoint without them): nothing to trust, as for the others
        return -chow_sum(lp) if lp is not None and lp.size else math.inf


@register("chow_average")
class ChowAverage(_ScoreRule):
    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        return -chow_average(lp) if lp is not None and lp.size else math.inf


@register("chow_quantile")
class ChowQuantile(_ScoreRule):
    def __init__(self, alpha: float = 0.0, **kw: float | None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise PolicyError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        super().__init__(**kw)  # type: ignore[arg-type]

    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        return -chow_quantile(lp, self.alpha) if lp is not None and lp.size else math.inf


@register("entropy_mean")
class EntropyMean(_ScoreRule):
    def score(self, features: Features) -> float:
        if features.entropies is None or not features.entropies.size:
            return math.inf  # no entropies from this backend: nothing to trust
        return entropy_mean(features.entropies)


@register("posthoc_quantile")
class PosthocQuantile(_ScoreRule):
    """P(unacceptable) from a logistic regression over the token features, refitted on
    every demonstration so far (standardised inputs, L2)."""

    use_embedding = False

    def __init__(
        self,
        c: float = 0.3,
        refit_every: int = 16,
        min_examples: int = 32,
        threshold: float | None = None,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        warmup: int = 0,
    ) -> None:
        if threshold is None and target_agreement is None:
            threshold = 0.5
        super().__init__(threshold, target_agreement, beta, explore_floor, warmup)
        self.c, self.refit_every, self.min_examples = c, refit_every, min_examples
        self.xs: list[np.ndarray] = []
        self.ys: list[int] = []
        self._since = 0
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.base_rate = 0.5

    def inputs(self, f: Features) -> np.ndarray:
        x = quantile_vector(f, ALPHAS)
        if self.use_embedding:
            if f.embedding is None:
                raise PolicyError(f"{self.kind} needs a prompt embedding (an encoder backend)")
            x = np.concatenate([x, np.asarray(f.embedding, dtype=np.float32)])
        return x

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        if self.coef is None or self.mean is None or self.scale is None:
            return np.full(len(x), 1.0 - self.base_rate)
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(z))  # P(unacceptable) = 1 - sigmoid(z)

    def score(self, features: Features) -> float:
        if features.token_logprobs is None or not features.token_logprobs.size:
            return math.inf
        return float(self.score_batch(self.inputs(features)[None])[0])

    def remember(self, features: Features, wrong: bool) -> None:
        if features.token_logprobs is not None and features.token_logprobs.size:
            self.xs.append(self.inputs(features))
            self.ys.append(0 if wrong else 1)
            self._since += 1

    def update(
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        self.remember(features, wrong)
        if len(self.ys) >= self.min_examples and self._since >= self.refit_every:
            self.refit()
        super().update(features, wrong, explored, deferred)

    def refit(self) -> None:
        x, y = np.stack(self.xs), np.array(self.ys)
        self.base_rate = float(y.mean())
        self._since = 0
        if len(np.unique(y)) < 2:
            return
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-3
        clf = LogisticRegression(C=self.c, max_iter=500).fit((x - mean) / scale, y)
        self.mean, self.scale = mean, scale
        self.coef, self.intercept = clf.coef_[0].astype(np.float32), float(clf.intercept_[0])

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        # the base rate alone scores every item until both verdicts have been seen
        out["base_rate"] = np.array([self.base_rate])
        if self.coef is not None and self.mean is not None and self.scale is not None:
            out.update(
                coef=self.coef,
                mean=self.mean,
                scale=self.scale,
                intercept=np.array([self.intercept]),
            )
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "base_rate" in arrays:
            self.base_rate = float(arrays["base_rate"][0])
        if "coef" in arrays:
            self.coef = arrays["coef"].astype(np.float32)
            self.mean = arrays["mean"].astype(np.float32)
            self.scale = arrays["scale"].astype(np.float32)
            self.intercept = float(arrays["intercept"][0])
        super().load_state(arrays)  # last: the operating point rescores with these


@register("posthoc_embed")
class PosthocEmbed(PosthocQuantile):
    """The post-hoc rule with a sentence embedding of the prompt added to its inputs."""

    use_embedding = True

    def __init__(self, c: float = 0.05, **kw: float | None) -> None:
        super().__init__(c=c, **kw)  # type: ignore[arg-type]
