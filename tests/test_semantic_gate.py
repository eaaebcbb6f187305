"""The semantic cache's gate: a similarity threshold held at a target agreement."""

import random

import pytest

from policies.semantic import SimilarityGate, StratifiedGate


def _feed(gate: SimilarityGate, n: int, seed: int = 0) -> None:
    """Near-repeats agree 99% of the time above 0.9, 80% in 0.8-0.9, 50% below."""
    rng = random.Random(seed)
    for _ in range(n):
        sim = rng.uniform(0.5, 1.0)
        p = 0.99 if sim >= 0.9 else 0.8 if sim >= 0.8 else 0.5
        gate.observe(sim, rng.random() < p)


def test_serves_nothing_until_the_target_is_shown():
    gate = SimilarityGate(target=0.95, min_samples=50)
    assert gate.threshold is None
    assert not gate.decide(0.999, 0.99).serve
    _feed(gate, 40)  # too few comparisons anywhere
    assert gate.threshold is None


def test_threshold_lands_where_agreement_reaches_the_target():
    gate = SimilarityGate(target=0.95, min_samples=50)
    _feed(gate, 4000)
    assert gate.threshold is not None
    assert 0.88 <= gate.threshold <= 0.95
    low = SimilarityGate(target=0.75, min_samples=50)
    _feed(low, 4000)
    assert low.threshold is not None and low.threshold < gate.threshold  # a lower bar, more hits
    assert not gate.decide(gate.threshold - 0.02, 0.99).serve
    assert gate.decide(0.999, 0.99).serve


def test_unreachable_target_serves_nothing():
    gate = SimilarityGate(target=0.999, min_samples=50)
    _feed(gate, 4000)
    assert gate.threshold is None


def test_verification_share_is_sized_by_need():
    gate = SimilarityGate(target=0.9, min_samples=50, verify_share=0.05)
    _feed(gate, 300)
    early = gate.verify_probability()
    _feed(gate, 5000, seed=1)
    late = gate.verify_probability()
    assert early > late >= 0.05
    d = gate.decide(0.999, 0.0)  # the coin came up: a check, not a hit
    assert d.verify and not d.serve and d.p == late


def test_shared_sums_round_trip_through_counters():
    a = SimilarityGate(target=0.9)
    counters: dict[str, float] = {}
    rng = random.Random(3)
    for _ in range(2000):
        sim = rng.uniform(0.5, 1.0)
        agreed = rng.random() < (0.99 if sim > 0.85 else 0.6)
        a.observe(sim, agreed)
        for k, v in a.deltas(sim, agreed).items():  # what the store's counters add up
            counters[k] = counters.get(k, 0.0) + v
    b = SimilarityGate(target=0.9)
    b.load(counters)
    assert b.threshold == pytest.approx(a.threshold)


def test_fixed_threshold_never_learns_or_verifies():
    gate = SimilarityGate(fixed=0.9)
    assert gate.decide(0.91, 0.0).serve
    assert not gate.decide(0.89, 0.0).serve
    _feed(gate, 1000)
    assert gate.threshold == 0.9 and gate.verify_probability() == 0.0


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="target"):
        SimilarityGate(target=1.5)


def test_bands_hold_the_target_each_on_their_own():
    """Answers the large LM gave unsurely are replayed wrong more often: their band must show
    the target by itself, and a sure band may serve while an unsure one does not."""
    gate = StratifiedGate([0.75], target=0.95, min_samples=50)
    rng = random.Random(5)
    counters: dict[str, float] = {}
    for _ in range(3000):
        sim, sure = rng.uniform(0.9, 1.0), rng.random() < 0.5
        record = 0.95 if sure else 0.55
        agreed = rng.random() < (0.995 if sure else 0.8)
        for k, v in gate.observe(sim, record, agreed).items():
            counters[k] = counters.get(k, 0.0) + v
    assert gate.gates[1].threshold is not None and gate.gates[0].threshold is None
    assert gate.decide(0.99, 0.95, 0.99).serve and not gate.decide(0.99, 0.55, 0.99).serve
    assert not gate.decide(0.99, None, 0.99).serve  # no record: the lowest band
    shared = StratifiedGate([0.75], target=0.95, min_samples=50)
    shared.load(counters)
    assert shared.threshold == gate.threshold
    bands = shared.summary()["bands"]
    assert [b["record"] for b in bands] == [[0.0, 0.75], [0.75, 1.0]]
    assert bands[1]["agreement"] > 0.98 > bands[0]["agreement"]
