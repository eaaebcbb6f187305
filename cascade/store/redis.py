"""Redis store, shared by every gateway process and the learner: one Redis or a Redis Cluster.

Counters are flushed in the background and kept locally while Redis is away. Demonstrations go
to a capped Redis Stream (``redis_demos``); when Redis is unreachable they wait in an outbox that
is also written to a local spill file, so neither a Redis blip nor a gateway restart during one
loses any.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import RedisError

from cascade.store.base import BUCKETS
from cascade.store.redis_demos import RedisDemos

log = logging.getLogger(__name__)


class RedisStore(RedisDemos):
    """Exact cache, request records, semantic-cache log, tables, rate limits and counters."""

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await super().close()
        await self._flush_outbox()
        await self.fast.aclose()
        await self.slow.aclose()
        for node in self._nodes.values():
            await node.aclose()

    # ------------------------------------------------------------------ cache and records

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        return (await self.cache_get_many([key]))[0]

    async def cache_get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """One round trip for every key, Redis's answer first; this process's own recent
        outcomes where Redis is away, slow or lost one (a SET that failed).

        Where this process holds one of the keys, Redis gets ``hedge_s`` to answer before the
        local copy is served: a Redis that stops answering (SIGSTOP, a partition) costs a
        repeat that long, not the socket timeout. The call goes on in the background and its
        failure trips the breaker as any other."""
        local = [self.local.get(k) for k in keys]
        call: Awaitable[tuple[bool, Any]] = self._try_fast(
            lambda: self._mget([self.k(k) for k in keys])
        )
        if any(v is not None for v in local):
            task = asyncio.ensure_future(call)
            done, _ = await asyncio.wait({task}, timeout=self.hedge_s)
            if not done:
                self._hold(task)
                return local
            call = task
        ok, raws = await call
        if not ok:
            return local
        return [mine if r is None else json.loads(r) for r, mine in zip(raws, local, strict=True)]

    def _mget(self, keys: list[str]) -> Awaitable[list[Any]]:
        """MGET; on a cluster, split by slot (a request's keys are hashes, spread over the
        masters), each node's share in one round trip, all at once."""
        if self.cluster:
            return self.fast.mget_nonatomic(keys)
        return self.fast.mget(keys)

    async def cache_set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        if ttl_s > 0:
            self.local.put(key, value, ttl_s)
            data = json.dumps(value, ensure_ascii=False)
            await self._fast(lambda: self.fast.set(self.k(key), data, ex=ttl_s))

    async def put_record(self, key: str, value: dict[str, Any], ttl_s: int | None) -> None:
        data = json.dumps(value, ensure_ascii=False)
        await self._fast(lambda: self.fast.set(self.k(key), data, ex=ttl_s))

    async def get_record(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.slow.get(self.k(key))
        except (RedisError, OSError):
            self.errors += 1
            return None
        return None if raw is None else json.loads(raw)

    # ------------------------------------------------------------------ semantic cache log

    async def sem_append(
        self, task: str, entry: dict[str, str], ttl_s: int, cap: int
    ) -> str | None:
        """XADD with an approximate MAXLEN (the size cap) and an approximate MINID trim (the
        TTL: stream ids are milliseconds), in one round trip."""
        key = self.tk("sem", task)
        oldest = f"{int((time.time() - ttl_s) * 1000)}-0"

        async def add() -> Any:
            pipe = self.fast.pipeline(transaction=False)
            pipe.xadd(key, dict(entry), maxlen=cap, approximate=True)
            pipe.xtrim(key, minid=oldest, approximate=True)
            return (await pipe.execute())[0]

        raw = await self._fast(add)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def sem_read(
        self, task: str, after: str | None, count: int
    ) -> list[tuple[str, dict[str, str]]] | None:
        start = "-" if after is None else f"({after}"
        ok, rows = await self._try_fast(
            lambda: self.fast.xrange(self.tk("sem", task), min=start, count=count)
        )
        if not ok:
            return None
        return [
            (i.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for i, fields in rows
        ]

    # ------------------------------------------------------------------ tables

    async def table_get(self, table: str, key: str) -> dict[str, Any] | None:
        raw = await self.slow.hget(self.k("table", table), key)
        return None if raw is None else json.loads(raw)

    async def table_set(self, table: str, key: str, value: dict[str, Any]) -> None:
        await self.slow.hset(self.k("table", table), key, json.dumps(value))

    async def table_all(self, table: str) -> dict[str, dict[str, Any]]:
        raw = await self.slow.hgetall(self.k("table", table))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def rate_hit(self, key: str, limit: int, window_s: int = 60) -> tuple[bool, float]:
        now = time.time()
        window = int(now // window_s)
        rkey = self.k("rate", key, window)

        async def hit() -> Any:
            async with self.fast.pipeline(transaction=False) as pipe:
                pipe.incr(rkey)
                pipe.expire(rkey, window_s + 1)
                return await pipe.execute()

        ok, res = await self._try_fast(hit)
        if not ok:  # fail open: an outage must not lock every client out
            log.debug("rate limit not enforced, Redis unavailable")
            return True, 0.0
        count = res[0]
        return int(count) <= limit, (window + 1) * window_s - now

    # ------------------------------------------------------------------ counters

    async def _write_counters(
        self,
        totals: dict[str, defaultdict[str, float]],
        buckets: dict[tuple[str, str, int], defaultdict[str, float]],
    ) -> None:
        ttl = {name: keep for name, _, keep in BUCKETS}
        async with self.slow.pipeline(transaction=False) as pipe:
            for task, d in totals.items():
                key = self.tk("stats", task)
                for f, v in d.items():
                    pipe.hincrbyfloat(key, f, v)
            for (task, name, idx), d in buckets.items():
                key = self.tk("stats", task, name, idx)
                for f, v in d.items():
                    pipe.hincrbyfloat(key, f, v)
                pipe.expire(key, ttl[name])
            await pipe.execute()

    async def _read_totals(self, task: str) -> dict[str, float]:
        raw = await self.slow.hgetall(self.tk("stats", task))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def _read_buckets(self, task: str, name: str, idx: list[int]) -> list[dict[str, float]]:
        async with self.slow.pipeline(transaction=False) as pipe:
            for b in idx:
                pipe.hgetall(self.tk("stats", task, name, b))
            rows = await pipe.execute()
        return [{k.decode(): float(v) for k, v in raw.items()} for raw in rows]

    async def flush_counters(self) -> None:
        await super().flush_counters()
        if self._outbox:
            await self._flush_outbox()
