"""GET /metrics after known traffic: every value is what was sent (real app, a private Redis
that the test stops to see store errors counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api_helpers import ALL_LEVELS_COST, LEVELS, gateway
from tests.conftest import RedisServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def scrape_until(
    client: httpx.AsyncClient, ready: Callable[[Samples], bool], timeout_s: float = 15.0
) -> Samples:
    """The gauges (learner lag, version, store errors) are refreshed every 2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(client)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, "metrics never got there"
        await asyncio.sleep(0.25)


@pytest.mark.slow  # a private Redis and a flush round
async def test_metrics_count_what_was_sent(
    tmp_path: Path, shared_backends: dict, smol_server, private_redis: RedisServer
) -> None:
    distinct = ["a warm film", "a dull, tedious film"]  # each answered by the large LM
    repeats = [distinct[0], distinct[1], distinct[0]]  # each answered from the cache
    n, m = len(distinct), len(repeats)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, redis_url=private_redis.url
    ) as client:
        before = await scrape(client)
        assert value(before, "cascade_store_errors_total") == 0.0
        for text in distinct:
            r = await client.post("/generate", json={"task": "sentiment", "input": text})
            assert r.status_code == 200, r.text
            assert (r.json()["level"], r.json()["cached"]) == ("large", False)
        for text in repeats:
            r = await client.post("/generate", json={"task": "sentiment", "input": text})
            assert r.status_code == 200, r.text
            assert r.json()["cached"] is True
        r = await client.post("/generate", json={"task": "summarise", "input": "x"})
        assert r.status_code == 404

        s = await scrape_until(
            client, lambda s: value(s, "cascade_learner_lag", task="sentiment") == n
        )

        def v(name: str, **labels: str) -> float | None:
            return value(s, name, **labels)

        sent = "cascade_requests_total"
        assert v(sent, task="sentiment", level="large", outcome="answered") == n
        assert v(sent, task="sentiment", level="large", outcome="cached") == m
        requests = {k: x for k, x in s.items() if k[0] == sent}
        assert sum(requests.values()) == n + m  # nothing else: the 404 is not a request served
        assert not [k for k in s if ("task", "summarise") in k[1]]
        assert v("cascade_cache_hits_total", task="sentiment") == m
        assert v("cascade_cache_misses_total", task="sentiment") == n
        assert v("cascade_llm_calls_total", task="sentiment") == n
        assert v("cascade_llm_calls_total", task="chat") is None
        assert v("cascade_llm_latency_seconds_count", task="sentiment") == n
        assert v("cascade_llm_latency_seconds_sum", task="sentiment") > 0
        # the gateway's own time, model time excluded, on every request served (a hit is all
        # overhead)
        assert v("cascade_gateway_overhead_seconds_count") == n + m
        assert 0 < v("cascade_gateway_overhead_seconds_sum") < (n + m) * 1.0
        for level in LEVELS[:-1]:  # every cheaper level deferred on every miss
            assert v("cascade_deferrals_total", task="sentiment", level=level) == n, level
            assert v("cascade_level_latency_seconds_count", task="sentiment", level=level) == n
        assert v("cascade_deferrals_total", task="sentiment", level="large") is None
        assert v("cascade_cost_total", task="sentiment") == pytest.approx(n * ALL_LEVELS_COST)
        assert v("cascade_cost_llm_only_total", task="sentiment") == pytest.approx(n + m)
        for task in ("sentiment", "chat"):
            assert v("cascade_policy_version", task=task) == 0.0  # the learner is off
        assert v("cascade_learner_lag", task="chat") == 0.0
        assert v("cascade_store_errors_total") == 0.0
        assert v("cascade_demonstrations_buffered") == 0.0
        assert v("cascade_demonstrations_dropped") == 0.0
        # the admin API, which reads the shared counters, agrees
        stats = (await client.get("/admin/stats")).json()["tasks"]["sentiment"]
        assert (stats["requests"], stats["cache_hits"]) == (n + m, m)
        assert stats["large_llm_calls"] == n and stats["learner_lag"] == n

        # Redis goes away: the gateway keeps serving /metrics and counts the store errors
        private_redis.stop()
        s = await scrape_until(client, lambda s: value(s, "cascade_store_errors_total") > 0)
        first = value(s, "cascade_store_errors_total")
        s = await scrape_until(client, lambda s: value(s, "cascade_store_errors_total") > first)
        assert v(sent, task="sentiment", level="large", outcome="answered") == n
