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
from typing import Any

import numpy as np

from policies.base import Decision, Features, Policy, PolicyError, register
from policies.features import (
    ALPHAS,
    chow_average,
    chow_quantile,
    chow_sum,
    entropy_mean,
    quantile_vector,
)
from policies.linear import LinearHead


class _ScoreRule(Policy):
    """A rule with a deferral score, a fixed threshold or an online operating point."""

    settable = ("threshold",)

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
        self.threshold = None if threshold is None else self.check_param("threshold", threshold)
        super().__init__(target_agreement, beta, explore_floor, warmup)

    def decide(self, features: Features) -> Decision:
        s = self.score(features)
        if self.op is not None:
            # an empty window answers nothing; an infinite score (nothing to score) defers
            defer = s >= self.op.threshold if self.op.samples else True
        else:
            assert self.threshold is not None
            defer = s > self.threshold
        return Decision(defer=defer, score=s)


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
        **kw: Any,
    ) -> None:
        if threshold is None and kw.get("target_agreement") is None:
            threshold = 0.5
        super().__init__(threshold, **kw)
        self.refit_every, self.min_examples = refit_every, min_examples
        self.head = LinearHead(c=c, max_iter=500)  # P(acceptable), fitted afresh each time
        self.xs: list[np.ndarray] = []
        self.ys: list[int] = []
        self._since = 0
        self.base_rate = 0.5  # P(acceptable) until both verdicts have been seen

    def inputs(self, f: Features) -> np.ndarray:
        x = quantile_vector(f, ALPHAS)
        if self.use_embedding:
            if f.embedding is None:
                raise PolicyError(f"{self.kind} needs a prompt embedding (an encoder backend)")
            x = np.concatenate([x, np.asarray(f.embedding, dtype=np.float32)])
        return x

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        if not self.head.fitted:
            return np.full(len(x), 1.0 - self.base_rate)
        # P(unacceptable) = expit(-z) directly: in float32, 1 - P(acceptable) is 0 from
        # z ~ 17 on, and the operating point orders the confident answers by it
        return 1.0 / (1.0 + np.exp(self.head.decision_function(x)))

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
        y = np.array(self.ys)
        self.base_rate, self._since = float(y.mean()), 0
        self.head.fit(np.stack(self.xs), y)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "base_rate": np.array([self.base_rate]), **self.head.state()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "base_rate" in arrays:
            self.base_rate = float(arrays["base_rate"][0])
        self.head.load_state(arrays)
        super().load_state(arrays)  # last: the operating point rescores with these


@register("posthoc_embed")
class PosthocEmbed(PosthocQuantile):
    """The post-hoc rule with a sentence embedding of the prompt added to its inputs."""

    use_embedding = True

    def __init__(self, c: float = 0.05, **kw: float | None) -> None:
        super().__init__(c=c, **kw)  # type: ignore[arg-type]
