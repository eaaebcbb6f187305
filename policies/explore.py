"""Exploration: with probability max(beta^k, floor) an item goes on to the large LM anyway.

In the paper k is the number of demonstrations the policy has learned from, so exploration is
heavy while the level is new and settles at ``floor``, which keeps a uniform stream of
comparisons with the large LM for the agreement estimate. Counted in demonstrations, though,
the decay slows down as the level learns to answer: once it answers nearly everything, the
explored items are nearly all the demonstrations there are, k grows only as fast as beta^k
and the probability falls as 1 / (1 + t ln(1/beta)) in the items t seen, not as beta^t. On
the 5,000-item Rotten Tomatoes stream at beta 0.99 that explored ~390 items instead of ~150,
8% of all traffic sent to the large LM for nothing (docs/BENCHMARKS.md, stream). So the
policies with a quality target count k as the larger of the demonstrations learned from
(``seen``, versioned) and the items the level has decided on (``traffic``: counted here, and
raised by the gateway to the shared count of every gateway's decisions on each version poll).

``warmup`` sends the first n items the level could answer on with probability 1, as
exploration samples: the operator pays for n large-LM labels up front instead of serving a
young level's answers. On the 5,000-item Rotten Tomatoes stream (lean cascade, 4 orders),
warm-up 300 lifted the first tenth's accuracy (targets 0.90-0.91) from 80.8-83.6% to
81.6-84.0%, but left the accuracy/share frontier where it was (82.61% against 82.54% at 30%
share, mean of 3 orders): it moves a run along the curve, not the curve (docs/BENCHMARKS.md,
lean-warmup). Off by default.
"""

from __future__ import annotations

# The floor of a policy with a quality target. Every explored item is a large-LM call the level
# could have answered, so the floor is paid on all traffic: 3% cost ~2 points of large-LM share
# on the 5,000-item Rotten Tomatoes stream for no better estimate where traffic is heavy (1% of
# 100k requests still fills the 1,000-sample window). Measured: docs/BENCHMARKS.md, stream.
TARGET_FLOOR = 0.01


class Explorer:
    def __init__(
        self, beta: float = 0.0, floor: float = 0.0, by_traffic: bool = False, warmup: int = 0
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"explore_floor must be in [0, 1], got {floor}")
        number = isinstance(warmup, int | float) and not isinstance(warmup, bool)
        if not (number and warmup >= 0 and float(warmup).is_integer()):
            raise ValueError(f"warmup must be a whole number >= 0, got {warmup!r}")
        self.warmup = int(warmup)
        self.beta = beta
        self.floor = floor
        self.by_traffic = by_traffic
        self.need = 0  # > 0: explore by what the estimate still needs, not by the decay
        self.seen = 0  # demonstrations learned from (the learner's count, versioned)
        self.traffic = 0  # items decided on in this process (by_traffic only)

    @classmethod
    def for_policy(
        cls,
        has_target: bool,
        beta: float | None = None,
        floor: float | None = None,
        warmup: int = 0,
    ) -> Explorer:
        """A policy's explorer: with a quality target it explores heavily while young (beta^k)
        and keeps the floor for the agreement estimate; without one, only if asked."""
        return cls(
            beta=beta if beta is not None else (0.99 if has_target else 0.0),
            floor=floor if floor is not None else (TARGET_FLOOR if has_target else 0.0),
            by_traffic=has_target,
            warmup=warmup,
        )

    def by_need(self, have: int) -> float:
        """Explore while the agreement estimate holds fewer than ``need`` explored samples,
        less as they come (1 - have/need), then at the floor: a level that the estimate
        already covers stops paying for samples it does not need, however young it is."""
        if max(self.seen, self.traffic) < self.warmup:
            return 1.0
        if self.by_traffic and not self.traffic:
            return self.floor  # its level has not decided on anything yet: nothing to learn
        return max(self.floor, 1.0 - have / self.need) if have < self.need else self.floor

    def keep_target_floor(self) -> None:
        """A target set later on a policy that had none: keep at least the target's floor."""
        self.floor = max(self.floor, TARGET_FLOOR)
        self.by_traffic = True

    def decided(self) -> None:
        """The serving path calls this for every item the policy decides on."""
        if self.by_traffic:
            self.traffic += 1

    @property
    def probability(self) -> float:
        k = max(self.seen, self.traffic)
        if k < self.warmup:
            return 1.0
        decay = self.beta**k if self.beta > 0 else 0.0
        return max(decay, self.floor)
