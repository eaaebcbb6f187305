"""Prometheus metrics (prometheus-client), fed by the runner's outcome observer.

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (``serve --workers`` does) and the
exposition aggregates the workers' files, so one scrape sees the whole process group.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as mp

from cascade.counters import TaskStat
from cascade.outcome import Outcome

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cascade_requests_total",
            "Requests answered, by the level that "
            "answered and how (answered, cached, degraded, unavailable)",
            ["task", "level", "outcome"],
            registry=r,
        )
        self.deferrals = Counter(
            "cascade_deferrals_total", "Requests a level passed on", ["task", "level"], registry=r
        )
        self.explorations = Counter(
            "cascade_explorations_total",
            "Items a level would have answered, sent on to explore",
            ["task", "level"],
            registry=r,
        )
        self.invalid = Counter(
            "cascade_invalid_answers_total",
            "LM answers outside the label set",
            ["task", "level"],
            registry=r,
        )
        self.cache_hits = Counter(
            "cascade_cache_hits_total", "Outcome cache hits", ["task"], registry=r
        )
        self.cache_misses = Counter(
            "cascade_cache_misses_total", "Outcome cache misses", ["task"], registry=r
        )
        self.llm_calls = Counter(
            "cascade_llm_calls_total", "Calls of the large LM", ["task"], registry=r
        )
        self.semantic_hits = Counter(
            "cascade_semantic_hits_total",
            "Requests answered with a similar request's cached large-LM answer",
            ["task"],
            registry=r,
        )
        self.semantic_verified = Counter(
            "cascade_semantic_verified_total",
            "Would-be semantic hits checked against the large LM, by whether they agreed",
            ["task", "agreed"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "cascade_llm_latency_seconds",
            "Large-LM call latency",
            ["task"],
            buckets=_LATENCY,
            registry=r,
        )
        self.level_latency = Histogram(
            "cascade_level_latency_seconds",
            "Latency per level",
            ["task", "level"],
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "cascade_gateway_overhead_seconds",
            "Time spent in the gateway itself, model time excluded",
            buckets=_OVERHEAD,
            registry=r,
        )
        self.cost = Counter("cascade_cost_total", "Cost in configured units", ["task"], registry=r)
        self.cost_llm_only = Counter(
            "cascade_cost_llm_only_total",
            "Cost had every request gone to the large LM",
            ["task"],
            registry=r,
        )
        gauge_mode = {"multiprocess_mode": "max"} if self.multiprocess else {}
        self.learner_lag = Gauge(
            "cascade_learner_lag",
            "Demonstrations waiting for the learner",
            ["task"],
            registry=r,
            **gauge_mode,
        )
        self.version = Gauge(
            "cascade_policy_version",
            "Learned version being served",
            ["task"],
            registry=r,
            **gauge_mode,
        )
        self.store_errors = Counter(
            "cascade_store_errors_total",
            "Store (Redis) errors swallowed: cache misses, buffered counters",
            registry=r,
        )
        self.demos_buffered = Gauge(
            "cascade_demonstrations_buffered",
            "Demonstrations waiting for Redis to come back",
            registry=r,
            **gauge_mode,
        )
        self.demos_dropped = Gauge(
            "cascade_demonstrations_dropped",
            "Demonstrations dropped (outbox overflow)",
            registry=r,
            **gauge_mode,
        )
        self._store_errors_seen = 0
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: labels() takes a lock and builds a key on
        every call, and a cache hit is so cheap that this showed in its profile."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, o: Outcome) -> None:
        c = o.counters
        if c.get(TaskStat.UNAVAILABLE):
            self._child(self.requests, o.task, "none", "unavailable").inc()
        elif o.cached:
            self._child(self.requests, o.task, o.level, "cached").inc()
        else:
            how = "degraded" if o.degraded else "answered"
            self._child(self.requests, o.task, o.level, how).inc()
        self.overhead.observe(o.overhead_ms / 1000)  # a cache hit is all overhead
        if o.cached:
            self._child(self.cache_hits, o.task).inc()
            if o.cache == "semantic":
                self._child(self.semantic_hits, o.task).inc()
        else:
            self._child(self.cache_misses, o.task).inc()
        for t in o.levels:
            if t.deferred:
                self._child(self.deferrals, o.task, t.name).inc()
            if t.explored:
                self._child(self.explorations, o.task, t.name).inc()
            if not t.valid:
                self._child(self.invalid, o.task, t.name).inc()
            if t.error is None:
                self._child(self.level_latency, o.task, t.name).observe(t.latency_ms / 1000)
        if c.get(TaskStat.LLM_CALLS):
            self._child(self.llm_calls, o.task).inc()
            large = next((t for t in reversed(o.levels)), None)
            if large is not None and large.error is None:
                self._child(self.llm_latency, o.task).observe(large.latency_ms / 1000)
        if c.get(TaskStat.SEM_VERIFIED):
            agreed = "true" if c.get(TaskStat.SEM_VERIFIED_AGREE) else "false"
            self._child(self.semantic_verified, o.task, agreed).inc()
        self._child(self.cost, o.task).inc(c.get(TaskStat.COST, 0.0))
        self._child(self.cost_llm_only, o.task).inc(c.get(TaskStat.COST_LLM_ONLY, 0.0))

    def sync_store_errors(self, total: int) -> None:
        if total > self._store_errors_seen:
            self.store_errors.inc(total - self._store_errors_seen)
            self._store_errors_seen = total

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess:
            reg = CollectorRegistry()
            mp.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
