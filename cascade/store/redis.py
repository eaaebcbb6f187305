"""Redis store, shared by every gateway process and the learner.

The hot path (cache reads and writes, request records) uses a client with short socket
timeouts behind a circuit breaker: when Redis is unreachable, requests see cache misses at once
instead of hanging, and every swallowed error is counted. Counters are flushed in the background
and kept locally while Redis is away. Demonstrations go to a capped Redis Stream; when Redis is
unreachable they wait in an outbox that is also written to a local spill file, so neither a
Redis blip nor a gateway restart during one loses any.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from cascade.store.base import BUCKETS, Store
from cascade.store.outbox import Outbox

log = logging.getLogger(__name__)

GROUP = "learners"

#: How long an appended demonstration is remembered as added (the window in which the outbox
#: may retry one whose first attempt timed out after Redis had served it: an outage's length).
DEMO_SEEN_TTL_S = 86_400

_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
end
return false
"""


def _id_tuple(i: str) -> tuple[int, int]:
    ms, _, seq = i.partition("-")
    return int(ms), int(seq or 0)


class _Breaker:
    """Open for ``cooldown_s`` after a failure, and until a probe finds Redis answering again.

    While open, no request goes to Redis. The probe is the store's own background PING, not a
    request: a stopped Redis (where every call waits out its socket timeout) costs requests
    nothing after the call that found it stopped."""

    def __init__(self, cooldown_s: float = 1.0) -> None:
        self.cooldown_s = cooldown_s
        self.open_until = 0.0
        self.is_open = False
        self.probing = False

    def probe_due(self) -> bool:
        """Open, cooled down and no probe running: time to ask Redis again."""
        return self.is_open and not self.probing and time.monotonic() >= self.open_until

    def succeed(self) -> None:
        self.probing = False
        self.is_open = False

    def trip(self) -> None:
        self.probing = False
        self.is_open = True
        self.open_until = time.monotonic() + self.cooldown_s


class LocalCache:
    """A bounded LRU of recent outcomes in this process, under the same keys as Redis's.

    Read only when Redis cannot answer: repeats stay answered from memory during an outage
    instead of running the models again, while a healthy Redis stays the one source of truth
    (a correction made through another process replaces the entry there)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def put(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        self._items[key] = (time.monotonic() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[1]

    def __len__(self) -> int:
        return len(self._items)


class RedisStore(Store):
    kind = "redis"

    def __init__(
        self,
        url: str,
        data_dir: Path,
        socket_timeout_s: float = 0.1,
        prefix: str = "cg",
        demo_maxlen: int = 200_000,
        outbox_max: int = 100_000,
        local_cache_entries: int = 4096,
        hedge_s: float = 0.02,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.demo_maxlen = demo_maxlen
        self.fast = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
            # a pooled connection that went stale when Redis restarted fails at once: one
            # immediate retry on a fresh connection, but never wait out a second timeout
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.slow = aioredis.Redis.from_url(
            url,
            socket_timeout=10.0,
            socket_connect_timeout=1.0,
            health_check_interval=30,
            # off the hot path: ride out a restart (stale connections, a server still loading)
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 4),
        )
        self.breaker = _Breaker()
        self.local = LocalCache(local_cache_entries)
        self.hedge_s = hedge_s
        # hedged reads and breaker probes still running
        self._background: set[asyncio.Future[Any]] = set()
        self._outbox = Outbox(data_dir / "outbox", outbox_max)
        self._pending_cursor: dict[str, str] = {}  # re-delivering own pending entries from here
        self._groups: set[str] = set()

    def k(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": _redact(self.url)}

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await super().close()
        await self._flush_outbox()
        await self.fast.aclose()
        await self.slow.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.slow.ping())
        except (RedisError, OSError):
            self.errors += 1
            return False

    async def _fast(self, coro_fn: Any, default: Any = None) -> Any:
        """Run a hot-path call; on any Redis failure count it, trip the breaker, return default."""
        return (await self._try_fast(coro_fn, default))[1]

    async def _try_fast(self, coro_fn: Any, default: Any = None) -> tuple[bool, Any]:
        """(whether Redis answered, its answer or ``default``)."""
        if self.breaker.is_open:
            self._probe_later()
            return False, default
        try:
            value = await coro_fn()
        except (TimeoutError, RedisError, OSError) as e:
            self.errors += 1
            self.breaker.trip()
            log.debug("redis unavailable on the hot path: %s", e)
            return False, default
        return True, value

    def _probe_later(self) -> None:
        """Once per cooldown while the breaker is open: PING Redis in the background and close
        the breaker when it answers."""
        if not self.breaker.probe_due():
            return
        self.breaker.probing = True

        async def probe() -> None:
            try:
                await self.fast.ping()
            except (TimeoutError, RedisError, OSError) as e:
                self.errors += 1
                self.breaker.trip()
                log.debug("redis still unavailable: %s", e)
            except BaseException:
                self.breaker.probing = False  # cancelled: the next request starts another
                raise
            else:
                self.breaker.succeed()

        self._hold(asyncio.ensure_future(probe()))

    def _hold(self, task: asyncio.Future[Any]) -> None:
        """Keep a reference to a call left running in the background until it is done."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
            lambda: self.fast.mget([self.k(k) for k in keys])
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
        key = self.k("sem", task)
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
            lambda: self.fast.xrange(self.k("sem", task), min=start, count=count)
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
                key = self.k("stats", task)
                for f, v in d.items():
                    pipe.hincrbyfloat(key, f, v)
            for (task, name, idx), d in buckets.items():
                key = self.k("stats", task, name, idx)
                for f, v in d.items():
                    pipe.hincrbyfloat(key, f, v)
                pipe.expire(key, ttl[name])
            await pipe.execute()

    async def _read_totals(self, task: str) -> dict[str, float]:
        raw = await self.slow.hgetall(self.k("stats", task))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def _read_buckets(self, task: str, name: str, idx: list[int]) -> list[dict[str, float]]:
        async with self.slow.pipeline(transaction=False) as pipe:
            for b in idx:
                pipe.hgetall(self.k("stats", task, name, b))
            rows = await pipe.execute()
        return [{k.decode(): float(v) for k, v in raw.items()} for raw in rows]

    # ------------------------------------------------------------------ demonstrations

    @property
    def demos_dropped(self) -> int:
        return self._outbox.dropped

    @property
    def demos_buffered(self) -> int:
        return len(self._outbox)

    def _demo_keys(self, task: str, data: str) -> list[str]:
        digest = hashlib.sha256(data.encode()).hexdigest()[:32]
        return [self.k("demos", task), self.k("demoseen", task, digest)]

    async def _xadd_demo(self, task: str, data: str, client: aioredis.Redis | None = None) -> None:
        """Append once: the script adds the entry only if this exact demonstration (it carries
        its request id and a timestamp) was not added before, so a retry after a timeout that
        Redis had in fact served (the outbox flushing it later) cannot write it twice."""
        await (client or self.slow).eval(
            _APPEND_ONCE,
            2,
            *self._demo_keys(task, data),
            data,
            self.demo_maxlen,
            DEMO_SEEN_TTL_S,
        )

    async def append_demo(self, task: str, demo: dict[str, Any]) -> None:
        data = json.dumps(demo, ensure_ascii=False, separators=(",", ":"))
        if not self._outbox:
            # the fast client: a stopped Redis costs this request one short timeout, not the
            # slow client's retries; the outbox retries what timed out, at most once in effect
            ok, _ = await self._try_fast(lambda: self._xadd_demo(task, data, self.fast))
            if ok:
                return
            log.warning("demonstration buffered, Redis unavailable")
        self._outbox.push(task, data)
        await asyncio.to_thread(self._outbox.save)

    async def _flush_outbox(self) -> None:
        sent = 0
        while self._outbox:
            try:
                await self._xadd_demo(*self._outbox.peek())
            except (RedisError, OSError):
                self.errors += 1
                break
            self._outbox.pop()
            sent += 1
        if sent:
            log.info("flushed %d buffered demonstrations to Redis", sent)
            await asyncio.to_thread(self._outbox.save)

    async def flush_counters(self) -> None:
        await super().flush_counters()
        if self._outbox:
            await self._flush_outbox()

    async def _ensure_group(self, task: str) -> None:
        if task in self._groups:
            return
        try:
            await self.slow.xgroup_create(self.k("demos", task), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._groups.add(task)

    async def resume_demos(self, task: str, consumer: str, applied_id: str | None) -> None:
        """Take over every pending demonstration (one learner by design), acknowledge those the
        resumed version already holds, and deliver the rest before anything new."""
        await self._ensure_group(task)
        stream = self.k("demos", task)
        start = "0-0"
        while True:
            res = await self.slow.xautoclaim(
                stream, GROUP, consumer, min_idle_time=0, start_id=start, count=1000
            )
            start = res[0].decode() if isinstance(res[0], bytes) else res[0]
            if start == "0-0":
                break
        if applied_id:
            done = []
            for entry in await self.slow.xpending_range(
                stream, GROUP, "-", "+", 1_000_000, consumername=consumer
            ):
                mid = entry["message_id"]
                mid = mid.decode() if isinstance(mid, bytes) else mid
                if _id_tuple(mid) <= _id_tuple(applied_id):
                    done.append(mid)
            for i in range(0, len(done), 1000):
                await self.slow.xack(stream, GROUP, *done[i : i + 1000])
        self._pending_cursor[task] = "0-0"

    async def read_demos(
        self, task: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        await self._ensure_group(task)
        stream = self.k("demos", task)
        cursor = self._pending_cursor.get(task)
        if cursor is not None:
            res = await self.slow.xreadgroup(GROUP, consumer, {stream: cursor}, count=count)
            entries = res[0][1] if res else []
            if entries:
                last = entries[-1][0]
                self._pending_cursor[task] = last.decode() if isinstance(last, bytes) else last
                return await self._decoded(task, entries)
            del self._pending_cursor[task]
        res = await self.slow.xreadgroup(
            GROUP, consumer, {stream: ">"}, count=count, block=block_ms or None
        )
        return await self._decoded(task, res[0][1]) if res else []

    async def _decoded(self, task: str, entries: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        out, gone = _decode_entries(entries)
        if gone:  # trimmed from the stream while pending: nothing left to learn from
            await self.ack_demos(task, gone)
        return out

    async def history(
        self, task: str, after: str | None, upto: str, count: int
    ) -> list[tuple[str, dict[str, Any]]]:
        start = f"({after}" if after else "-"
        entries = await self.slow.xrange(self.k("demos", task), start, upto, count=count)
        return _decode_entries(entries)[0]

    async def ack_demos(self, task: str, ids: list[str]) -> None:
        stream = self.k("demos", task)
        for i in range(0, len(ids), 1000):
            await self.slow.xack(stream, GROUP, *ids[i : i + 1000])

    async def demo_lag(self, task: str) -> int:
        stream = self.k("demos", task)
        try:
            groups = await self.slow.xinfo_groups(stream)
        except ResponseError:
            return 0
        for g in groups:
            if g["name"] in (GROUP, GROUP.encode()):
                lag = g.get("lag") or 0
                return int(g.get("pending", 0)) + int(lag)
        return int(await self.slow.xlen(stream))

    # ------------------------------------------------------------------ versions

    async def put_version(self, task: str, blob: bytes, keep: int = 5) -> int:
        number = int(await self.slow.incr(self.k("ver", task, "seq")))
        async with self.slow.pipeline(transaction=True) as pipe:
            pipe.set(self.k("ver", task, number), blob)
            pipe.set(self.k("ver", task, "latest"), number)
            if number > keep:
                pipe.delete(self.k("ver", task, number - keep))
            await pipe.execute()
        return number

    async def latest_version(self, task: str) -> int:
        raw = await self.slow.get(self.k("ver", task, "latest"))
        return int(raw) if raw else 0

    async def get_version(self, task: str, number: int) -> bytes | None:
        raw = await self.slow.get(self.k("ver", task, number))
        return bytes(raw) if raw is not None else None


def _decode_entries(entries: list[Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    out, gone = [], []
    for mid, fields in entries:
        mid = mid.decode() if isinstance(mid, bytes) else mid
        if not fields:
            gone.append(mid)
            continue
        raw = fields.get(b"d") or fields.get("d")
        out.append((mid, json.loads(raw)))
    return out, gone


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
