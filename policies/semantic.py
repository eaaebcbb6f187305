"""When may a cached neighbour's answer be served for a request that is not byte-for-byte equal?

Peers serve a semantic hit whenever the cosine similarity passes one fixed threshold, which
replays wrong answers wherever near-equal wording asks for another answer. ``SimilarityGate``
learns the threshold online instead, the way a level's operating point is learned: every
labelled comparison says, for one similarity, whether the neighbour's answer agreed with what
the large LM answered for the request itself. The gate serves a hit only at similarities where
the (importance-weighted) agreement's one-sided Wilson lower bound is at or above the target.

Comparisons come from two places:

- **Misses that reached the large LM**, with a neighbour above ``floor``: free (the large LM ran
  anyway), weight 1. They cover similarities below the current threshold.
- **Verified would-be hits**: a share of the requests the gate would serve is run through the
  cascade anyway; weight 1/p, so that they stand for every hit they were drawn from.

Counts are kept per similarity bin, as sums that add across gateways (the store's counters
carry them), so every replica serves with what all of them have verified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from policies.operating import wilson_lower

#: Per-bin sums, as counter names: weight, weight of agreeing comparisons, squared weight.
SUMS = ("w", "wa", "w2")


@dataclass(frozen=True)
class GateDecision:
    """What the gate says about a request's nearest neighbour."""

    serve: bool  # answer with the neighbour's answer
    verify: bool  # would serve, but run the cascade to check it (a verification sample)
    p: float  # the probability with which a would-be hit is verified


class SimilarityGate:
    """A similarity threshold held at a target agreement with the large LM.

    ``fixed`` turns learning off: serve every neighbour at or above that cosine, as peers do
    (the benchmark's baselines, or an operator's explicit choice).
    """

    def __init__(
        self,
        target: float = 0.95,
        floor: float = 0.5,
        bin_width: float = 0.01,
        z: float = 1.28,
        min_samples: float = 50.0,
        verify_share: float = 0.05,
        fixed: float | None = None,
    ) -> None:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {target}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.target = target
        self.floor = floor
        self.bin_width = bin_width
        self.z = z
        self.min_samples = min_samples
        self.verify_share = verify_share
        self.fixed = fixed
        self.n_bins = math.ceil((1.0 - floor) / bin_width) + 1
        self.sums: dict[str, list[float]] = {s: [0.0] * self.n_bins for s in SUMS}
        self.threshold: float | None = fixed  # None: no similarity has shown the target yet
        self.agreement_lower = 0.0  # the lower bound at the threshold
        self.n_eff = 0.0  # effective sample size at and above the threshold

    # ------------------------------------------------------------------ evidence

    def bin_of(self, similarity: float) -> int:
        i = int((min(similarity, 1.0) - self.floor) / self.bin_width)
        return max(0, min(self.n_bins - 1, i))

    def deltas(self, similarity: float, agreed: bool, weight: float = 1.0) -> dict[str, float]:
        """One comparison as counter increments (``load`` reads their sums back)."""
        b = self.bin_of(similarity)
        return {
            f"w:{b}": weight,
            f"wa:{b}": weight * float(agreed),
            f"w2:{b}": weight * weight,
        }

    def observe(self, similarity: float, agreed: bool, weight: float = 1.0) -> None:
        """Add one comparison to this process's sums and move the threshold."""
        if similarity < self.floor:
            return
        for name, v in self.deltas(similarity, agreed, weight).items():
            s, b = name.split(":")
            self.sums[s][int(b)] += v
        self.refit()

    def load(self, counters: Mapping[str, float]) -> None:
        """Replace the sums with shared totals (``deltas`` keys, every gateway's)."""
        sums: dict[str, list[float]] = {s: [0.0] * self.n_bins for s in SUMS}
        for name, v in counters.items():
            s, _, b = name.partition(":")
            if s in sums and b.isdigit() and int(b) < self.n_bins:
                sums[s][int(b)] = float(v)
        self.sums = sums
        self.refit()

    def refit(self) -> None:
        """The lowest similarity whose agreement at and above it shows the target."""
        if self.fixed is not None:
            return
        w = wa = w2 = 0.0
        best: tuple[float, float, float] | None = None
        for b in range(self.n_bins - 1, -1, -1):  # from the most similar down
            w += self.sums["w"][b]
            wa += self.sums["wa"][b]
            w2 += self.sums["w2"][b]
            if w2 <= 0:
                continue
            n_eff = w * w / w2
            if n_eff < self.min_samples:
                continue
            low = wilson_lower(wa / w * n_eff, n_eff, self.z)
            if low >= self.target:
                best = (self.floor + b * self.bin_width, low, n_eff)
        if best is None:
            self.threshold, self.agreement_lower, self.n_eff = None, 0.0, 0.0
        else:
            self.threshold, self.agreement_lower, self.n_eff = best

    # ------------------------------------------------------------------ deciding

    def verify_probability(self) -> float:
        """How often a would-be hit is checked: more while the bound has few samples behind it
        (``min_samples`` over the effective count), never below ``verify_share``."""
        if self.fixed is not None:
            return 0.0
        need = self.min_samples / max(self.n_eff, 1.0)
        return min(1.0, max(self.verify_share, need))

    def decide(self, similarity: float, draw: float) -> GateDecision:
        """``draw`` is uniform in [0, 1): the verification coin."""
        t = self.threshold
        if t is None or similarity < t:
            return GateDecision(False, False, 0.0)
        p = self.verify_probability()
        if draw < p:
            return GateDecision(False, True, p)
        return GateDecision(True, False, p)

    def summary(self) -> dict[str, float | None]:
        """Verified agreement over all comparisons at or above the threshold, with a 95%
        interval (Wilson, on the effective sample size)."""
        t = self.threshold
        lo = self.bin_of(t) if t is not None else self.n_bins
        w = sum(self.sums["w"][lo:])
        wa = sum(self.sums["wa"][lo:])
        w2 = sum(self.sums["w2"][lo:])
        if w2 <= 0:
            return {"threshold": t, "agreement": None, "low": None, "high": None, "n": 0.0}
        n = w * w / w2
        p = wa / w
        low = wilson_lower(p * n, n, 1.96)
        high = 1.0 - wilson_lower((1.0 - p) * n, n, 1.96)
        return {"threshold": t, "agreement": p, "low": low, "high": high, "n": n}
