"""The static baseline: answer when the level's confidence reaches a threshold."""

from __future__ import annotations

from policies.base import Decision, Features, Policy, PolicyError, register


@register("threshold")
class ThresholdPolicy(Policy):
    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = _check_unit("threshold", threshold)

    def decide(self, features: Features) -> Decision:
        score = 1.0 - float(features.confidence)
        return Decision(defer=features.confidence < self.threshold, score=score)

    def params(self) -> dict[str, float]:
        return {"threshold": self.threshold}

    def set_params(self, **params: float) -> None:
        unknown = set(params) - {"threshold"}
        if unknown:
            raise PolicyError(f"threshold policy has no parameter(s) {sorted(unknown)}")
        if "threshold" in params:
            self.threshold = _check_unit("threshold", params["threshold"])


def _check_unit(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} must be a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise PolicyError(f"{name} must be between 0 and 1, got {v}")
    return v
