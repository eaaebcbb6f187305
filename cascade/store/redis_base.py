"""The Redis store's base: its clients (one Redis or a Redis Cluster), key layout, and the
hot path's circuit breaker.

The hot path (cache reads and writes, request records) uses a client with short socket
timeouts behind a circuit breaker: when Redis is unreachable, requests see cache misses at once
instead of hanging, and every swallowed error is counted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from cascade.store.base import Store
from cascade.store.hotpath import Breaker, LocalCache
from cascade.store.outbox import Outbox

log = logging.getLogger(__name__)

#: URL schemes that name a Redis Cluster (any one node; the rest are discovered from it).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def _plain_url(url: str) -> str:
    """``redis+cluster://h:p`` -> ``redis://h:p``: redis-py's own scheme for the same node."""
    return url.replace("+cluster://", "://", 1) if is_cluster_url(url) else url


def node_url(url: str, host: str, port: int) -> str:
    """The configured URL (scheme, credentials, options) pointed at one node of the cluster."""
    parts = urlsplit(_plain_url(url))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, "", parts.query, ""))


def _clients(url: str, cluster: bool, socket_timeout_s: float) -> tuple[Any, Any]:
    """(fast, slow) clients. The fast one serves the hot path: short timeouts, one immediate
    retry on a fresh connection (a pooled one went stale when Redis restarted), never a second
    timeout. The slow one is off the hot path and rides out a restart or a failover."""
    fast_opts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    slow_opts: dict[str, Any] = {
        "socket_timeout": 10.0,
        "socket_connect_timeout": 1.0,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 4),
    }
    if not cluster:
        fast_opts["retry_on_timeout"] = False
        return (
            aioredis.Redis.from_url(url, **fast_opts),
            aioredis.Redis.from_url(url, **slow_opts),
        )
    # a failover moves a slot to the replica: the cluster client follows MOVED and refreshes
    # its map; the slow client retries long enough to outlast the election (node timeout)
    node = _plain_url(url)
    slow_opts["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.1), 10)
    return (
        aioredis.RedisCluster.from_url(node, **fast_opts),
        aioredis.RedisCluster.from_url(node, **slow_opts),
    )


class RedisBase(Store):
    """Clients, keys and the hot path's breaker; ``RedisStore`` adds what is stored."""

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
        cluster: bool = False,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.demo_maxlen = demo_maxlen
        self.cluster = cluster or is_cluster_url(url)
        self.fast, self.slow = _clients(url, self.cluster, socket_timeout_s)
        self.breaker = Breaker()
        self.local = LocalCache(local_cache_entries)
        self.hedge_s = hedge_s
        # hedged reads and breaker probes still running
        self._background: set[asyncio.Future[Any]] = set()
        self._outbox = Outbox(data_dir / "outbox", outbox_max)
        self._pending_cursor: dict[str, str] = {}  # re-delivering own pending entries from here
        self._groups: set[str] = set()
        self.socket_timeout_s = socket_timeout_s
        # cluster: a plain client per master for appends that WAIT for a replica
        self._nodes: dict[tuple[str, int, bool], Any] = {}
        self._replicas: dict[str, tuple[int, float]] = {}  # master: (replicas, when seen)

    def k(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def tk(self, kind: str, task: str, *parts: object) -> str:
        """A key of one task's: in cluster mode the task is its hash tag, so the keys one
        script or transaction touches together (a stream and its seen-markers, a version and
        ``latest``) share a slot, and different tasks spread over the masters."""
        return self.k(kind, f"{{{task}}}" if self.cluster else task, *parts)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": _redact(self.url), "cluster": self.cluster}

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


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
