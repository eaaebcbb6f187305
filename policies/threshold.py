"""The static baseline: answer when the level's confidence reaches a threshold.

With ``target_agreement`` set, the threshold is not static: it is the operating point that
keeps the measured agreement with the large LM at the target (see ``operating.py``).
"""

from __future__ import annotations

import numpy as np

from policies.base import Decision, Features, Policy, PolicyError, register
from policies.explore import Explorer
from policies.operating import OperatingPoint


@register("threshold")
class ThresholdPolicy(Policy):
    def __init__(
        self,
        threshold: float = 0.9,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        warmup: int = 0,
    ) -> None:
        self.threshold = check_unit("threshold", threshold)
        if target_agreement is not None:
            target_agreement = check_target(target_agreement)
        self.op = OperatingPoint(target_agreement) if target_agreement is not None else None
        self.explorer = Explorer.for_policy(self.op is not None, beta, explore_floor, warmup)
        self.learned = self.op is not None

    def score(self, features: Features) -> float:
        return 1.0 - float(features.confidence)

    def decide(self, features: Features) -> Decision:
        s = self.score(features)
        defer = s >= self.op.threshold if self.op else features.confidence < self.threshold
        return Decision(defer=defer, score=s, explore=False)

    def update(
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        self.explorer.seen += 1
        if self.op is not None and (explored or deferred):
            self.op.observe(np.array([features.confidence]), not wrong, deferred=not explored)
            self.op.refit(_one_minus)

    def params(self) -> dict[str, float]:
        out = {"threshold": self.threshold, "explore_probability": self.explorer.probability}
        if self.explorer.warmup:
            out["warmup"] = self.explorer.warmup
        if self.op is not None:
            out["target_agreement"] = self.op.target
            out["operating_threshold"] = 1.0 - self.op.threshold
        return out

    def set_params(self, **params: float) -> None:
        unknown = set(params) - {"threshold", "target_agreement"}
        if unknown:
            raise PolicyError(f"threshold policy has no parameter(s) {sorted(unknown)}")
        if "threshold" in params:
            self.threshold = check_unit("threshold", params["threshold"])
        if "target_agreement" in params:
            t = check_target(params["target_agreement"])
            if self.op is None:
                self.op = OperatingPoint(t)
                self.explorer.keep_target_floor()
                self.learned = True
            else:
                self.op.target = t
                self.op.refit(_one_minus)

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
            self.op.rescore(_one_minus)


def _one_minus(x: np.ndarray) -> np.ndarray:
    return 1.0 - x[:, 0]


def check_unit(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} must be a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise PolicyError(f"{name} must be between 0 and 1, got {v}")
    return v


def check_target(value: float) -> float:
    """An agreement target is a share in (0, 1]: 0 would let a level answer anything."""
    v = check_unit("target_agreement", value)
    if v <= 0.0:
        raise PolicyError(f"target_agreement must be in (0, 1], got {v}")
    return v
