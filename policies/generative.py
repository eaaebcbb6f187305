"""Deferral rules for generated text (Gupta et al., ICLR 2024), selectable per task.

Simple rules threshold one statistic of the small LM's token log-probabilities (higher score
= more reason to defer): ``chow_sum`` (minus the sequence log-likelihood: it mostly measures
length), ``chow_average`` (minus the mean), ``chow_quantile`` (minus the alpha-quantile) and
``entropy_mean`` (mean step entropy). The learned rules are in policies/posthoc.py.

Every rule takes either a fixed ``threshold`` on its score or a ``target_agreement``: the
share of answered items that must be acceptable, held online from exploration samples.
"""

from __future__ import annotations

import math
from typing import Unpack

from policies.base import Decision, Features, Knob, Policy, PolicyError, register
from policies.features import chow_average, chow_quantile, chow_sum, entropy_mean


class ScoreRule(Policy):
    """A rule with a deferral score, a fixed threshold or an online operating point."""

    settable = ("threshold",)

    def __init__(
        self,
        threshold: float | None = None,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        **knob: Unpack[Knob],
    ) -> None:
        if threshold is None and target_agreement is None:
            raise PolicyError(f"{self.kind}: give a threshold or a target_agreement")
        self.threshold = None if threshold is None else self.check_param("threshold", threshold)
        super().__init__(target_agreement, beta, explore_floor, **knob)

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
class ChowSum(ScoreRule):
    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        # no log-probabilities (an endpoint without them): nothing to trust, as for the others
        return -chow_sum(lp) if lp is not None and lp.size else math.inf


@register("chow_average")
class ChowAverage(ScoreRule):
    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        return -chow_average(lp) if lp is not None and lp.size else math.inf


@register("chow_quantile")
class ChowQuantile(ScoreRule):
    def __init__(self, alpha: float = 0.0, **kw: float | None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise PolicyError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        super().__init__(**kw)  # type: ignore[arg-type]

    def score(self, features: Features) -> float:
        lp = features.token_logprobs
        return -chow_quantile(lp, self.alpha) if lp is not None and lp.size else math.inf


@register("entropy_mean")
class EntropyMean(ScoreRule):
    def score(self, features: Features) -> float:
        if features.entropies is None or not features.entropies.size:
            return math.inf  # no entropies from this backend: nothing to trust
        return entropy_mean(features.entropies)
