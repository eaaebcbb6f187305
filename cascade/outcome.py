"""What a request produces (an ``Outcome`` with one ``LevelTrace`` per level tried), and the
errors a client can act on."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cascade.counters import TaskStat

if TYPE_CHECKING:
    from cascade.runtime import TaskRuntime
    from cascade.store.base import Store


class CascadeError(Exception):
    """Base of errors a client can act on; ``status`` is the HTTP status to answer with."""

    status = 400
    retry_after_s: float | None = None  # sent as Retry-After: the client may try again then


class UnknownTaskError(CascadeError):
    status = 404


class InputTooLargeError(CascadeError):
    status = 413


class OverloadedError(CascadeError):
    """Too many requests already wait for a model: shed now, the client retries later."""

    status = 503
    retry_after_s = 1.0


class PromptTooLongError(CascadeError):
    """The prompt does not fit the model's context: bad input, not an upstream failure."""

    status = 400


class CascadeUnavailableError(CascadeError):
    """No level could answer (the large LM failed and no cheaper answer exists)."""

    status = 503


@dataclass
class LevelTrace:
    name: str
    answered: bool
    confidence: float | None
    latency_ms: float
    deferred: bool = False
    explored: bool = False
    valid: bool = True
    ready: bool = True
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "answered": self.answered,
            "confidence": None if self.confidence is None else round(self.confidence, 6),
            "latency_ms": round(self.latency_ms, 3),
            "ready": self.ready,
            "valid": self.valid,
            "explored": self.explored,
            "error": self.error,
        }


@dataclass
class Outcome:
    request_id: str
    task: str
    output: str
    label: str | None
    level: str
    levels: list[LevelTrace]
    cached: bool
    cost: float
    degraded: bool = False
    version: int = 0
    overhead_ms: float = 0.0
    total_ms: float = 0.0
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    counters: dict[str, float] = field(default_factory=dict)
    cache: str | None = None  # which cache answered: "exact" or "semantic"
    similarity: float | None = None  # a semantic hit's cosine to the neighbour it served

    @property
    def model_ms(self) -> float:
        return sum(t.latency_ms for t in self.levels)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "task": self.task,
            "output": self.output,
            "label": self.label,
            "level": self.level,
            "levels": [t.to_json() for t in self.levels],
            "cached": self.cached,
            "cache": self.cache,
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "cost": round(self.cost, 6),
            "degraded": self.degraded,
            "version": self.version,
        }


def cache_hit(
    store: Store,
    rt: TaskRuntime,
    answer: tuple[str, str | None, str],
    t0: float,
    cache: str,
    similarity: float | None = None,
    counted: dict[str, float] | None = None,
) -> Outcome:
    """A request answered from a cache (``answer``: output, label, level), at no cost: its
    counters booked (``counted`` adds to the hit's own), its outcome returned."""
    deltas = {
        TaskStat.REQUESTS: 1,
        TaskStat.CACHE_HITS: 1,
        TaskStat.COST_LLM_ONLY: rt.large.cost,
        **(counted or {}),
    }
    store.count(rt.name, deltas)
    total = (time.perf_counter() - t0) * 1000
    output, label, level = answer
    return Outcome(
        uuid.uuid4().hex,
        rt.name,
        output,
        label,
        level,
        [],
        cached=True,
        cost=0.0,
        version=rt.version,
        overhead_ms=total,
        total_ms=total,
        counters=deltas,
        cache=cache,
        similarity=similarity,
    )
