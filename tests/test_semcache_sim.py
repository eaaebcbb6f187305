"""`bench semcache-sim`: the gates replayed over a stream, as the cache runs them."""

from __future__ import annotations

import numpy as np

from bench.semcache_sim import Traffic, replay, summarise
from policies.semantic import FixedGate


def _unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_exact_repeats_near_repeats_and_their_errors() -> None:
    a, a_near, b = _unit(1, 0, 0), _unit(1, 0.2, 0), _unit(0, 1, 0)  # cos(a, a_near) = 0.98
    t = Traffic(
        texts=["a", "a", "a near", "b", "a near 2"],
        labels=["yes", "yes", "no", "no", "yes"],
        records=[0.9, 0.9, 0.8, 0.9, 0.9],
        vectors=np.stack([a, a, a_near, b, _unit(1, 0.21, 0)]),
    )
    out = replay(t, 0, FixedGate(0.95))
    # "a" again: exact; "a near": served a's "yes" (wrong: its answer is "no"); "b": a miss;
    # "a near 2": nearest is "a" (never became an entry twice), served "yes" (right)
    assert out == {"hits": 3, "semantic_hits": 2, "error_rate": round(1 / 3, 4)}
    # at 0.999 "a near" misses and becomes an entry; "a near 2" (0.99995 from it) gets its "no"
    assert replay(t, 0, FixedGate(0.999)) == {"hits": 2, "semantic_hits": 1, "error_rate": 0.5}


def test_the_summary_counts_bound_breaches_and_dominance() -> None:
    runs = []
    for order, (hits, err) in enumerate([(150, 0.03), (90, 0.07)]):
        runs.append(
            {"order": order, "system": "fixed", "threshold": 0.8, "hits": 100, "error_rate": 0.09}
        )
        runs.append(
            {
                "order": order,
                "system": "verified",
                "target_agreement": 0.95,
                "residual_prior": 0.0,
                "hits": hits,
                "error_rate": err,
            }
        )
    fixed, learned = summarise(runs)
    assert fixed["hits_min"] == fixed["hits_max"] == 100 and "orders_over_bound" not in fixed
    assert learned["orders_over_bound"] == [1]  # 7% passes 1 - 0.95 + 0.01
    assert learned["dominates_fixed_0.8"] == 1  # order 0 only: order 1 has fewer hits
    assert learned["hits_mean"] == 120 and learned["error_max"] == 0.07


def test_the_frontier_counts_a_target_only_within_its_bound() -> None:
    from bench.semcache_sim import frontier

    def row(order: int, target: float, hits: int, err: float) -> dict:
        return {
            "order": order,
            "system": "verified",
            "target_agreement": target,
            "residual_prior": 0.0,
            "hits": hits,
            "error_rate": err,
        }

    runs = [
        {"order": k, "system": "fixed", "threshold": 0.8, "hits": 100, "error_rate": 0.09}
        for k in range(3)
    ]
    runs += [row(0, 0.95, 150, 0.03), row(0, 0.9, 90, 0.05)]  # 0.95 beats it
    runs += [row(1, 0.95, 150, 0.07), row(1, 0.9, 200, 0.08)]  # 0.95 over its bound: 0.9 does
    runs += [row(2, 0.95, 150, 0.07), row(2, 0.9, 90, 0.05)]  # neither, within its bound
    (only,) = frontier(runs)
    assert only["threshold"] == 0.8 and only["orders_beaten"] == [0, 1]
    assert only["by"] == [[0.95], [0.9]]
