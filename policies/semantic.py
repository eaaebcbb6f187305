"""When may a cached neighbour's answer be served for a request that is not byte-for-byte equal?

Peers serve a semantic hit whenever the cosine similarity passes one fixed threshold, which
replays wrong answers wherever near-equal wording gets another answer. ``SimilarityGate``
learns the threshold online instead, the way a level's operating point is learned: every
labelled comparison says, for one similarity, whether the neighbour's answer agreed with what
the large LM answered for the request itself. The gate serves a hit only at similarities where
the agreement's one-sided Wilson lower bound is at or above the target.

Comparisons come from two places:

- **Misses that reached the large LM** with a neighbour above ``floor``: free (the large LM ran
  anyway). They cover similarities below the current threshold.
- **Verified would-be hits**: a share of the requests the gate would serve is run through the
  cascade anyway, to keep measuring what it serves.

Both count once. Above the threshold only the verified share is sampled, so pooled counts
weigh the region just below it more than the hits do; there agreement is lowest, so the
estimate errs on the safe side (weighting by the inverse sampling share would remove that
bias, at the price of an effective sample size that collapses whenever the share drops).

``StratifiedGate`` keeps one gate per band of a second feature, the neighbour's own record
(for a classify task, the large LM's confidence in the cached answer): an answer the large LM
gave at 51% is replayed wrong far more often than one it gave at 90%, at any similarity.
Counts are sums, stored as the store's counters, so every replica serves with what all of them
have compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.operating import wilson_lower


@dataclass(frozen=True)
class GateDecision:
    """What the gate says about a request's nearest neighbour."""

    serve: bool  # answer with the neighbour's answer
    verify: bool  # would serve, but run the cascade to check it (a verification sample)
    p: float  # the probability with which a would-be hit is verified


MISS = GateDecision(False, False, 0.0)


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
        min_samples: int = 30,
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
        self.n = [0.0] * self.n_bins  # comparisons per similarity bin
        self.agree = [0.0] * self.n_bins  # ... whose neighbour's answer agreed
        self.threshold: float | None = fixed  # None: no similarity has shown the target yet
        self.support = 0.0  # comparisons at and above the threshold

    def bin_of(self, similarity: float) -> int:
        # the epsilon keeps a bin's own edge in it (0.95 is bin 45 of 0.5 + 0.01 k, not 44)
        i = int((min(similarity, 1.0) - self.floor) / self.bin_width + 1e-9)
        return max(0, min(self.n_bins - 1, i))

    def deltas(self, similarity: float, agreed: bool) -> dict[str, float]:
        """One comparison as counter increments (``load`` reads their sums back)."""
        b = self.bin_of(similarity)
        return {f"n:{b}": 1.0, f"a:{b}": float(agreed)}

    def observe(self, similarity: float, agreed: bool) -> None:
        if similarity < self.floor:
            return
        b = self.bin_of(similarity)
        self.n[b] += 1.0
        self.agree[b] += float(agreed)
        self.refit()

    def load(self, counters: Mapping[str, float]) -> None:
        """Replace the counts with shared totals (``deltas`` keys)."""
        n, agree = [0.0] * self.n_bins, [0.0] * self.n_bins
        for name, v in counters.items():
            s, _, b = name.partition(":")
            if b.isdigit() and int(b) < self.n_bins and s in ("n", "a"):
                (n if s == "n" else agree)[int(b)] = float(v)
        self.n, self.agree = n, agree
        self.refit()

    def refit(self) -> None:
        """The lowest similarity whose agreement at and above it shows the target."""
        if self.fixed is not None:
            return
        n = a = 0.0
        best: tuple[float, float] | None = None
        for b in range(self.n_bins - 1, -1, -1):  # from the most similar down
            n += self.n[b]
            a += self.agree[b]
            if n >= self.min_samples and wilson_lower(a, n, self.z) >= self.target:
                best = (self.floor + b * self.bin_width, n)
        self.threshold, self.support = best if best is not None else (None, 0.0)

    def verify_probability(self) -> float:
        """How often a would-be hit is checked: more while few comparisons stand behind the
        threshold (``min_samples`` over their count), never below ``verify_share``."""
        if self.fixed is not None:
            return 0.0
        need = self.min_samples / max(self.support, 1.0)
        return min(1.0, max(self.verify_share, need))

    def decide(self, similarity: float, draw: float) -> GateDecision:
        """``draw`` is uniform in [0, 1): the verification coin."""
        t = self.threshold
        if t is None or similarity < t:
            return MISS
        p = self.verify_probability()
        return GateDecision(False, True, p) if draw < p else GateDecision(True, False, p)

    def summary(self) -> dict[str, Any]:
        """Agreement of the comparisons at and above the threshold (all of them while there
        is none), with a 95% interval."""
        lo = self.bin_of(self.threshold) if self.threshold is not None else 0
        n, a = sum(self.n[lo:]), sum(self.agree[lo:])
        out: dict[str, Any] = {"threshold": self.threshold, "comparisons": n}
        out["agreement"] = a / n if n else None
        out["ci95"] = [wilson_lower(a, n, 1.96), 1.0 - wilson_lower(n - a, n, 1.96)] if n else None
        return out


class StratifiedGate:
    """One ``SimilarityGate`` per band of the neighbour's record (``edges`` split [0, 1]):
    each band holds the target on its own, so the hits together do too."""

    def __init__(self, edges: Sequence[float] = (), **gate: Any) -> None:
        self.edges = sorted(edges)
        self.gates = [SimilarityGate(**gate) for _ in range(len(self.edges) + 1)]
        self.floor = self.gates[0].floor
        self.fixed = self.gates[0].fixed
        self.target = self.gates[0].target

    def band(self, record: float | None) -> int:
        """The band of a neighbour's record (None, unknown: the lowest band)."""
        return 0 if record is None else sum(record >= e for e in self.edges)

    def decide(self, similarity: float, record: float | None, draw: float) -> GateDecision:
        if similarity < self.floor:
            return MISS
        return self.gates[self.band(record)].decide(similarity, draw)

    def observe(self, similarity: float, record: float | None, agreed: bool) -> dict[str, float]:
        """Count one comparison; return it as counter increments."""
        k = self.band(record)
        self.gates[k].observe(similarity, agreed)
        return {f"{k}/{name}": v for name, v in self.gates[k].deltas(similarity, agreed).items()}

    def load(self, counters: Mapping[str, float]) -> None:
        per: list[dict[str, float]] = [{} for _ in self.gates]
        for name, v in counters.items():
            k, _, rest = name.partition("/")
            if k.isdigit() and int(k) < len(per):
                per[int(k)][rest] = v
        for gate, c in zip(self.gates, per, strict=True):
            gate.load(c)

    @property
    def threshold(self) -> float | None:
        """The lowest similarity any band serves at (None: no band serves yet)."""
        ts = [g.threshold for g in self.gates if g.threshold is not None]
        return min(ts) if ts else None

    def summary(self) -> dict[str, Any]:
        bands = []
        for i, g in enumerate(self.gates):
            lo = 0.0 if i == 0 else self.edges[i - 1]
            hi = 1.0 if i == len(self.edges) else self.edges[i]
            bands.append({"record": [lo, hi], **g.summary(), "verify": g.verify_probability()})
        return {"threshold": self.threshold, "bands": bands}
