"""`bench learner` on a small corpus: real demonstrations (the bench's own models, recorded
large-LM answers), a real learner on a real Redis, every figure the full run reports."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import redis

from bench.learner import LearnerArgs, learner_bench
from bench.learner_report import checks
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.slow


def test_learner_bench_measures_rate_memory_and_heads(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    out = tmp_path / "learner.json"
    args = LearnerArgs(
        total=900,
        checkpoints=(300, 900),
        redis_url=REDIS_URL,
        items=80,
        holdout=0.25,
        out=out,
        write_doc=False,
    )
    payload = asyncio.run(learner_bench(args))
    assert out.is_file()
    assert payload["config"]["corpus"] == {"rotten-tomatoes": 80, "trec": 80}
    pts = payload["points"]
    assert [p["demonstrations"] for p in pts] == [300, 900]
    for p in pts:
        assert p["demos_per_s"] > 0 and p["rss_mb"] > 50
        assert 0 < p["memories_mb"] <= payload["memories_cap_mb"]
        lo, hi = p["window"]
        assert lo < hi and hi >= p["demonstrations"]
    # the series is the learner's running totals: demonstrations and busy time only grow
    series = payload["series"]
    assert all(b["demonstrations"] >= a["demonstrations"] for a, b in itertools.pairwise(series))
    assert all(b["busy_s"] >= a["busy_s"] for a, b in itertools.pairwise(series))
    assert series[-1]["demonstrations"] >= 900
    # every trained head was scored at each checkpoint on held-out demonstrations
    heads = payload["heads"]
    assert {(h["task"], h["head"]) for h in heads} == {
        (t, lv) for t in ("rotten-tomatoes", "trec") for lv in ("encoder", "small")
    }
    for h in heads:
        assert 0.0 <= h["accuracy"] <= 1.0 and 0.0 <= h["accuracy_converged"] <= 1.0
        assert h["remembered"] > 0 and h["max_abs_dp"] >= h["mean_abs_dp"] >= 0.0
    assert "min_demos_per_s" in checks(payload)
    # the bench leaves nothing behind in Redis
    assert not list(redis_client.scan_iter(match="bench-learner-*", count=1000))
