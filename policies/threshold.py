"""The static baseline: answer when the level's confidence reaches a threshold.

With ``target_agreement`` set, the threshold is not static: it is the operating point that
keeps the measured agreement with the large LM at the target (see ``operating.py``).
"""

from __future__ import annotations

from typing import Unpack

import numpy as np

from policies.base import Decision, Features, Knob, Policy, check_number, check_unit, register


@register("threshold")
class ThresholdPolicy(Policy):
    settable = ("threshold",)
    keeps_deferred = True  # 1 - confidence never moves as the policy learns

    def __init__(
        self,
        threshold: float = 0.9,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        prior: float = 0.0,
        explore_need: int = 0,
        **knob: Unpack[Knob],
    ) -> None:
        self.threshold = self.check_param("threshold", threshold)
        super().__init__(target_agreement, beta, explore_floor, **knob)
        if self.op is not None and explore_need > 0:
            self.explorer.need = int(explore_need)
        prior = check_number("prior", prior)
        if self.op is not None and prior > 0:
            # the level's confidence as its own calibration: P(agree | score) = 1 - score,
            # worth ``prior`` explored samples until the task's own samples outweigh it
            self.op.prior_strength = prior
            self.op.prior = lambda s: 1.0 - s
            self.op.refit(self.score_batch)

    @property
    def sample_only(self) -> bool:
        """A level that cannot pay for itself yet runs on its learning sample only, but only
        once even its estimate's upper bound says it will not answer ``min_answer_share``: a
        young level that may pay learns on all its traffic (it reaches its samples sooner),
        one whose zero-shot answers plainly disagree with the large LM stops costing at once."""
        return self.plainly_cannot_pay

    def check_param(self, name: str, value: float) -> float:
        return check_unit(name, value)

    def score(self, features: Features) -> float:
        return 1.0 - float(features.confidence)

    def decide(self, features: Features) -> Decision:
        s = self.score(features)
        defer = s >= self.op.threshold if self.op else features.confidence < self.threshold
        return Decision(defer=defer, score=s)

    def inputs(self, features: Features) -> np.ndarray:
        return np.array([features.confidence])

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        return 1.0 - x[:, 0]

    @property
    def operating_threshold(self) -> float:
        """As a confidence, like ``threshold``."""
        return 1.0 - super().operating_threshold
