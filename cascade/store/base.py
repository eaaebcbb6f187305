"""The store: outcome cache, shared counters, demonstrations and model versions.

Two implementations share this contract: ``MemoryStore`` (embedded, one process, demonstrations
and versions in files under the data directory) and ``RedisStore`` (shared by every gateway
process). Counters are buffered locally and flushed in the background, so the hot path pays no
round trip for them and a Redis outage loses none: they are flushed when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

from cascade.aio import stop_if_cancelled

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

#: Time buckets kept for windowed statistics: (name, seconds per bucket, how long kept).
BUCKETS = (("m", 60, 2 * 3600), ("h", 3600, 26 * 3600))

WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400, "all": None}


def add_counters(
    into: dict[K, defaultdict[str, float]], more: Mapping[K, Mapping[str, float]]
) -> None:
    """Add counters, per key (a task, or a task's time bucket), into ``into``."""
    for key, d in more.items():
        tgt = into.setdefault(key, defaultdict(float))
        for k, v in d.items():
            tgt[k] += v


def bucket_plan(window_s: int) -> tuple[str, int, int]:
    """Which bucket series answers a window, and how many buckets (the current one included)."""
    name, size, _ = BUCKETS[0] if window_s <= 2 * 3600 else BUCKETS[1]
    return name, size, window_s // size + 1


class LeaseLostError(RuntimeError):
    """This learner no longer holds the task's lease: another one learns it now."""


class Store(ABC):
    """Shared state of the gateway; every method fails open where the hot path calls it."""

    kind: str = "abstract"

    def __init__(self, flush_interval_s: float = 0.2) -> None:
        self._pending: dict[str, defaultdict[str, float]] = {}
        self._pending_buckets: dict[tuple[str, str, int], defaultdict[str, float]] = {}
        self._flush_interval_s = flush_interval_s
        self._flusher: asyncio.Task[None] | None = None
        self.errors = 0  # swallowed errors, exposed as a metric

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="counter-flusher")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush_counters()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush_counters()
            except Exception:  # never let the flusher die
                log.exception("counter flush failed")
            stop_if_cancelled()

    @abstractmethod
    async def ping(self) -> bool: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    # ------------------------------------------------------------------ outcome cache

    @abstractmethod
    async def cache_get(self, key: str) -> dict[str, Any] | None: ...

    async def cache_get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        return [await self.cache_get(k) for k in keys]

    @abstractmethod
    async def cache_set(self, key: str, value: dict[str, Any], ttl_s: int) -> None: ...

    # ------------------------------------------------------------------ semantic cache log

    @abstractmethod
    async def sem_append(
        self, task: str, entry: dict[str, str], ttl_s: int, cap: int
    ) -> str | None:
        """Append a semantic-cache entry to the task's shared log, which keeps at most about
        ``cap`` entries and none older than ``ttl_s``; its id, or None when the store is away
        (the entry then stays this process's own)."""

    @abstractmethod
    async def sem_read(
        self, task: str, after: str | None, count: int
    ) -> list[tuple[str, dict[str, str]]] | None:
        """Up to ``count`` entries after id ``after`` (None: from the oldest kept), oldest
        first; None when the store is away. Every gateway feeds its index from this."""

    # ------------------------------------------------------------------ counters

    def count(self, task: str, deltas: dict[str, float], now: float | None = None) -> None:
        """Add to a task's counters (all-time and time buckets); flushed in the background."""
        now = time.time() if now is None else now
        total = self._pending.setdefault(task, defaultdict(float))
        for k, v in deltas.items():
            total[k] += v
        for name, size, _ in BUCKETS:
            b = self._pending_buckets.setdefault((task, name, int(now // size)), defaultdict(float))
            for k, v in deltas.items():
                b[k] += v

    async def flush_counters(self) -> None:
        if not self._pending and not self._pending_buckets:
            return
        pending, buckets = self._pending, self._pending_buckets
        self._pending, self._pending_buckets = {}, {}
        try:
            await self._write_counters(pending, buckets)
        except Exception as e:  # keep them and try again later
            self.errors += 1
            log.debug("counters kept locally: %s", e)
            add_counters(self._pending, pending)
            add_counters(self._pending_buckets, buckets)

    @property
    def pending_counters(self) -> int:
        return sum(len(d) for d in self._pending.values())

    @abstractmethod
    async def _write_counters(
        self,
        totals: dict[str, defaultdict[str, float]],
        buckets: dict[tuple[str, str, int], defaultdict[str, float]],
    ) -> None: ...

    async def read_counters(self, task: str, window_s: int | None = None) -> dict[str, float]:
        """Counters of a task over the last ``window_s`` seconds (None: since the beginning)."""
        if window_s is None:
            return await self._read_totals(task)
        out: defaultdict[str, float] = defaultdict(float)
        for _, row in await self.read_series(task, window_s):
            for k, v in row.items():
                out[k] += v
        return dict(out)

    @abstractmethod
    async def _read_totals(self, task: str) -> dict[str, float]: ...

    async def read_series(self, task: str, window_s: int) -> list[tuple[int, dict[str, float]]]:
        """Per-bucket counters over a window, oldest first: (bucket start, counters)."""
        name, size, n = bucket_plan(window_s)
        current = int(time.time() // size)
        idx = list(range(current - n + 1, current + 1))
        rows = await self._read_buckets(task, name, idx)
        return [(i * size, r) for i, r in zip(idx, rows, strict=True)]

    @abstractmethod
    async def _read_buckets(
        self, task: str, name: str, idx: list[int]
    ) -> list[dict[str, float]]: ...

    # ------------------------------------------------------------------ demonstrations

    @abstractmethod
    async def append_demo(self, task: str, demo: dict[str, Any]) -> None:
        """Append durably (or buffer and retry); never raises on the hot path."""

    @abstractmethod
    async def resume_demos(self, task: str, consumer: str, applied_id: str | None) -> None:
        """Position ``consumer`` right after ``applied_id`` (the last id its version holds)."""

    @abstractmethod
    async def read_demos(
        self, task: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Next unprocessed demonstrations for this consumer, in order."""

    @abstractmethod
    async def ack_demos(self, task: str, ids: list[str]) -> None: ...

    @abstractmethod
    async def history(
        self, task: str, after: str | None, upto: str, count: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Already-applied demonstrations in order, after ``after`` (None: from the first) up
        to and including ``upto``: a restarted learner rebuilds its training memory from them."""

    @abstractmethod
    async def demo_lag(self, task: str) -> int:
        """Demonstrations appended but not yet acknowledged by the learner."""

    @property
    def demos_dropped(self) -> int:
        return 0

    @property
    def demos_buffered(self) -> int:
        return 0

    # ------------------------------------------------------------------ versions

    @abstractmethod
    async def put_version(
        self, task: str, blob: bytes, keep: int = 5, owner: str | None = None
    ) -> int:
        """Store a new version of a task's learned state; return its number. With ``owner`` (a
        lease token), only while that lease holds the task (else ``LeaseLostError``): a learner
        stalled past its lease cannot publish over the one that took the task over."""

    @abstractmethod
    async def latest_version(self, task: str) -> int:
        """Latest version number (0: none yet)."""

    @abstractmethod
    async def get_version(self, task: str, number: int) -> bytes | None: ...

    # ------------------------------------------------------------------ learner leases

    @abstractmethod
    async def task_lease(
        self, task: str, owner: str, ttl_s: float, token: str | None = None
    ) -> str | None:
        """Without ``token``: take the task's learner lease if it is free (or held by an
        earlier process of the same name) and return its token (``owner#epoch``, a new epoch
        each time). With ``token``: renew the lease if it is still that one. None when the
        lease is, or was meanwhile, another's: an expired lease is never renewed, since
        another learner may have held the task in between."""

    @abstractmethod
    async def task_release(self, task: str, token: str) -> None:
        """Give the lease up (only if it is still ``token``): another learner may take it now."""

    @abstractmethod
    async def task_owner(self, task: str) -> str | None:
        """The learner that holds the task's lease now (None: no learner learns it)."""

    @abstractmethod
    async def learners_alive(self, member: str, ttl_s: float) -> int:
        """Record that learner ``member`` is alive; how many learners did so within ``ttl_s``."""

    # ------------------------------------------------------------------ small shared tables

    @abstractmethod
    async def table_get(self, table: str, key: str) -> dict[str, Any] | None:
        """One entry of a small durable table (API keys, settings history)."""

    @abstractmethod
    async def table_set(self, table: str, key: str, value: dict[str, Any]) -> None: ...

    @abstractmethod
    async def table_all(self, table: str) -> dict[str, dict[str, Any]]: ...

    @abstractmethod
    async def rate_hit(self, key: str, limit: int, window_s: int = 60) -> tuple[bool, float]:
        """Count one request against ``limit`` per fixed window, across every process sharing
        the store; return (allowed, seconds until the window resets)."""

    # ------------------------------------------------------------------ records

    @abstractmethod
    async def put_record(self, key: str, value: dict[str, Any], ttl_s: int | None) -> None: ...

    @abstractmethod
    async def get_record(self, key: str) -> dict[str, Any] | None: ...
