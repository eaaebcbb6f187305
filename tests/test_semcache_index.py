"""The semantic cache's in-process index: partitions, the size cap, expiry, replacement, and
the shared log read back once (the gate itself: tests/test_semantic_gate.py)."""

from __future__ import annotations

import time

import numpy as np

from cascade.semantic_settings import SemanticCacheConfig
from cascade.semcache import SemanticCache, decode_vec, encode_vec


def cache(shared_backends: dict, **cfg: object) -> SemanticCache:
    config = SemanticCacheConfig(encoder="minilm", fixed_threshold=0.8, **cfg)
    return SemanticCache("t", config, shared_backends["minilm"], ttl_s=3600)


def test_neighbours_are_found_within_their_partition_only(shared_backends: dict) -> None:
    sem = cache(shared_backends)
    a, b = sem.embed("a warm film"), sem.embed("tax law, in detail")
    sem.index("1-0", sem.entry_fields("p1", a, "positive", "positive", "large", 0.9))
    sem.index("2-0", sem.entry_fields("p2", b, "negative", "negative", "large", 0.9))
    near = sem.embed("A warm film!")
    look = sem.lookup(["p1"], near)
    assert look.neighbour is not None and look.neighbour.entry.entry_id == "1-0"
    assert look.neighbour.similarity > 0.8 and look.decision.serve
    assert look.neighbour.entry.record == 0.9
    other = sem.lookup(["p2"], near)  # the other partition holds an unrelated text only
    assert other.neighbour is not None and not other.decision.serve
    assert sem.lookup(["p3"], near).neighbour is None


def test_the_cap_evicts_the_oldest_and_expired_entries_are_never_served(
    shared_backends: dict,
) -> None:
    sem = cache(shared_backends, max_entries=2)
    texts = ["a warm film", "tax law, in detail", "storm floods the valley"]
    for i, t in enumerate(texts):
        sem.index(f"{i}-0", sem.entry_fields("p", sem.embed(t), t, None, "large"))
    assert len(sem) == 2
    look = sem.lookup(["p"], sem.embed("a warm film"))
    assert look.neighbour is None or look.neighbour.entry.entry_id != "0-0"  # evicted
    fields = sem.entry_fields("p", sem.embed("a cold film"), "x", None, "large")
    fields["x"] = f"{time.time() - 1:.3f}"  # expired before it was read from the log
    sem.index("9-0", fields)
    assert len(sem) == 2


def test_a_newer_answer_at_the_same_words_replaces_the_older(shared_backends: dict) -> None:
    sem = cache(shared_backends)
    v = sem.embed("a warm film")
    sem.index("1-0", sem.entry_fields("p", v, "positive", "positive", "large", 0.6))
    sem.index("2-0", sem.entry_fields("p", v, "negative", "negative", "feedback", 1.0))
    assert len(sem) == 1
    look = sem.lookup(["p"], v)
    assert look.neighbour is not None and look.neighbour.entry.label == "negative"
    sem.index("1-0", sem.entry_fields("p", v, "positive", "positive", "large", 0.6))
    assert sem.lookup(["p"], v).neighbour.entry.label == "negative"  # not re-read from the log


def test_vectors_travel_as_float16_text(shared_backends: dict) -> None:
    v = cache(shared_backends).embed("a warm film")
    back = decode_vec(encode_vec(v))
    assert back.shape == v.shape and float(np.dot(back, v)) > 0.9999


def test_report_says_what_the_gate_does(shared_backends: dict) -> None:
    sem = cache(shared_backends)
    rep = sem.report()
    assert rep["fixed_threshold"] == 0.8 and rep["target_agreement"] is None
    assert rep["threshold"] == 0.8 and rep["entries"] == 0
    assert rep["comparisons"] == 0 and rep["agreement"] is None


def test_a_comparison_counts_once_however_the_log_hands_it_back(shared_backends: dict) -> None:
    """A sync may read this process's own comparison from the log (its cursor hands each row
    back once) before the request that made it has learned it: the tag, remembered before the
    row is written, keeps it out."""
    config = SemanticCacheConfig(encoder="minilm", target_agreement=0.9, min_samples=5)
    sem = SemanticCache("t", config, shared_backends["minilm"], ttl_s=3600)
    x = np.array([0.95, 0.9, 0.9, 1.0, 0.9, 0.8])
    mine = sem.comparison(x, True)
    sem.learn_shared([("1-0", mine)])  # read back first
    sem.learn(True, mine)
    assert len(sem.gate.rows) == 1 and not sem._own_cmp
    other = SemanticCache("t", config, shared_backends["minilm"], ttl_s=3600)
    theirs = other.comparison(x, False)
    sem.learn_shared([("2-0", theirs), ("3-0", {"f": "junk", "a": "1"})])  # a bad row: skipped
    assert len(sem.gate.rows) == 2 and [a for _, a in sem.gate.rows] == [True, False]
    lost = sem.comparison(x, True)  # the log was unreachable: learned here, tag dropped
    sem.learn(False, lost)
    assert len(sem.gate.rows) == 3 and not sem._own_cmp


def test_the_residual_prior_reaches_the_gate_and_a_negative_one_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    from policies.semantic import LearnedGate

    config = SemanticCacheConfig(encoder="minilm", residual_prior=0)
    sem = SemanticCache("t", config, encoder=None, ttl_s=3600)  # type: ignore[arg-type]
    assert isinstance(sem.gate, LearnedGate) and sem.gate.residual_prior == 0
    assert SemanticCacheConfig(encoder="minilm").residual_prior == 100  # the default
    with pytest.raises(ValidationError, match="residual_prior"):
        SemanticCacheConfig(encoder="minilm", residual_prior=-1)
