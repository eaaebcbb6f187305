"""The Redis store failing open while Redis is away: counters, demonstrations and the cache
ride out an unreachable, stopped or restarted Redis, and nothing is written twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import redis

from cascade.llm_server import free_port
from cascade.store.redis import RedisStore
from tests.conftest import REDIS_URL, RedisServer
from tests.test_store import TASK, demo, read_all


async def test_redis_unreachable_fails_open(tmp_path: Path) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "data", prefix="cgdown")
    try:
        t0 = time.monotonic()
        assert await store.cache_get("cache:a") is None
        await store.cache_set("cache:a", {"output": "x"}, ttl_s=60)
        await store.put_record("req:1", {"task": TASK}, ttl_s=60)
        assert await store.get_record("req:1") is None
        assert await store.ping() is False
        store.count(TASK, {"requests": 1})
        await store.flush_counters()  # no exception: kept for later
        await store.append_demo(TASK, demo(1))  # buffered, never raised
        assert time.monotonic() - t0 < 10  # no call hung on the dead server
        assert store.pending_counters == 1
        assert store.demos_buffered == 1
        assert store.errors > 0
        assert list((tmp_path / "data" / "outbox").glob("outbox-*.jsonl"))  # spilled to disk
    finally:
        await store.close()


async def test_redis_outage_keeps_counters_and_demos(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    client = redis.Redis(port=private_redis.port)
    store = RedisStore(private_redis.url, tmp_path / "data", prefix="cgout")
    try:
        store.count(TASK, {"requests": 1})
        await store.flush_counters()
        assert await store.read_counters(TASK) == {"requests": 1}

        private_redis.stop()
        t0 = time.monotonic()
        assert await store.cache_get("cache:a") is None
        assert time.monotonic() - t0 < 5  # a miss at once, not a hang
        store.count(TASK, {"requests": 2, "cost": 1.5})
        await store.flush_counters()
        await store.append_demo(TASK, demo(1))
        assert store.pending_counters == 2
        assert store.demos_buffered == 1

        private_redis.start()  # same port, same data directory
        deadline = time.monotonic() + 15
        while store.pending_counters or store.demos_buffered:
            assert time.monotonic() < deadline, "counters not flushed after Redis came back"
            await asyncio.sleep(0.2)
            await store.flush_counters()
        assert await store.read_counters(TASK) == {"requests": 3, "cost": 1.5}
        assert client.xlen(f"cgout:demos:{TASK}") == 1
        # the hot path recovers once the breaker's cooldown has passed
        while await store.cache_get("cache:b") is None:
            assert time.monotonic() < deadline, "the cache never came back"
            await store.cache_set("cache:b", {"output": "y"}, ttl_s=60)
            await asyncio.sleep(0.2)
    finally:
        await store.close()
        client.close()


async def test_buffered_demos_survive_a_gateway_restart(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    client = redis.Redis(port=private_redis.port)
    first = RedisStore(private_redis.url, tmp_path / "data", prefix="cgspill")
    private_redis.stop()
    await first.append_demo(TASK, demo(1))
    await first.append_demo(TASK, demo(2))
    await first.close()  # the gateway exits while Redis is still away

    private_redis.start()
    second = RedisStore(private_redis.url, tmp_path / "data", prefix="cgspill")
    try:
        assert second.demos_buffered == 2  # adopted from the spill file
        await second.flush_counters()
        assert second.demos_buffered == 0
        await second.resume_demos(TASK, "learner-a", None)
        got = await read_all(second)
        assert [d["input"] for _, d in got] == ["text 1", "text 2"]
        assert client.xlen(f"cgspill:demos:{TASK}") == 2
        assert not list((tmp_path / "data" / "outbox").glob("outbox-*.jsonl"))
    finally:
        await second.close()
        client.close()


async def test_reconnects_at_once_after_a_redis_restart(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Pooled connections go stale when Redis restarts; the first call after it must still
    work (a retry on a fresh connection), on the hot path and off it."""
    store = RedisStore(private_redis.url, tmp_path / "data", prefix="cgrestart")
    try:
        await store.cache_set("cache:a", {"output": "x"}, ttl_s=60)
        assert await store.put_version(TASK, b"v1") == 1
        assert await store.cache_get("cache:a") == {"output": "x"}  # connections now pooled

        private_redis.stop()
        private_redis.start()  # same port, same AOF
        assert await store.latest_version(TASK) == 1  # would raise on the stale connection
        assert await store.cache_get("cache:a") == {"output": "x"}  # not a counted miss
        assert store.errors == 0
    finally:
        await store.close()


async def test_a_demonstration_retried_after_a_timeout_is_written_once(
    tmp_path: Path, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """An append that timed out after Redis had served it is retried from the outbox: the
    stream must still hold it once (the learner would otherwise learn it twice)."""
    store = RedisStore(REDIS_URL, tmp_path / "data", prefix=redis_prefix)
    try:
        await store.append_demo(TASK, demo(1))
        data = json.dumps(demo(1), ensure_ascii=False, separators=(",", ":"))
        # what the outbox does with an entry whose first attempt seemed to fail
        store._outbox.push(TASK, data)
        await store.flush_counters()
        assert store.demos_buffered == 0
        assert redis_client.xlen(f"{redis_prefix}:demos:{TASK}") == 1
        await store.append_demo(TASK, demo(2))  # another demonstration is written
        assert redis_client.xlen(f"{redis_prefix}:demos:{TASK}") == 2
    finally:
        await store.close()


async def test_repeats_are_answered_while_redis_is_stopped(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """SIGSTOP: Redis accepts connections and never answers. A key this process wrote is
    served from its own copy within the hedge, not after the socket timeout; a key it never
    saw is a miss (the breaker trips on the timeout, and later misses are at once)."""
    store = RedisStore(private_redis.url, tmp_path / "data", prefix="cgstop")
    assert private_redis.proc is not None
    try:
        await store.cache_set("cache:known", {"output": "x"}, ttl_s=60)
        assert await store.cache_get("cache:known") == {"output": "x"}  # from Redis
        private_redis.proc.send_signal(signal.SIGSTOP)
        took = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert await store.cache_get("cache:known") == {"output": "x"}
            took.append(time.perf_counter() - t0)
        # the hedge (20 ms), not the socket timeout (0.1 s) each time: the median, so that a
        # busy machine's scheduling hiccups do not decide it
        assert sorted(took)[len(took) // 2] < 0.05, took
        assert await store.cache_get("cache:never") is None
        t0 = time.perf_counter()
        assert await store.cache_get("cache:never") is None  # the breaker is open: at once
        assert time.perf_counter() - t0 < 0.05
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
        await store.close()


async def test_a_stopped_redis_is_probed_in_the_background(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Once a call has found Redis stopped, no request waits on it again: the breaker's probe
    is the store's own background PING, and it closes the breaker when Redis answers again."""
    store = RedisStore(private_redis.url, tmp_path / "data", prefix="cgprobe")
    store.breaker.cooldown_s = 0.2
    sent: list[object] = []
    real_mget = store.fast.mget

    async def counting_mget(*args: object, **kwargs: object) -> object:
        sent.append(args)
        return await real_mget(*args, **kwargs)

    store.fast.mget = counting_mget  # type: ignore[method-assign]
    client = redis.Redis(port=private_redis.port)
    assert private_redis.proc is not None
    try:
        assert await store.cache_get("cache:never") is None  # Redis answers: a plain miss
        private_redis.proc.send_signal(signal.SIGSTOP)
        assert await store.cache_get("cache:never") is None  # waits out the socket timeout
        assert store.breaker.is_open
        asked = len(sent)
        errors = store.errors
        for _ in range(12):  # five cooldowns and more
            assert await store.cache_get("cache:never") is None
            await asyncio.sleep(0.1)
        assert len(sent) == asked  # no request went to the stopped Redis
        assert store.errors > errors  # the background probes did, and counted their failures
        assert store.breaker.is_open
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    try:
        client.set("cgprobe:cache:fresh", json.dumps({"output": "from redis"}))
        deadline = time.monotonic() + 10
        while await store.cache_get("cache:fresh") is None:  # read from Redis once closed
            assert time.monotonic() < deadline, "the breaker never closed after SIGCONT"
            await asyncio.sleep(0.1)
        assert not store.breaker.is_open
    finally:
        await store.close()
        client.close()


async def test_a_lost_cache_write_is_answered_from_this_process(
    tmp_path: Path, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Redis lost an entry this process wrote (a failed SET, an eviction): the local copy
    answers rather than running the models again."""
    store = RedisStore(REDIS_URL, tmp_path / "data", prefix=redis_prefix)
    try:
        await store.cache_set("cache:k", {"output": "x"}, ttl_s=60)
        redis_client.delete(f"{redis_prefix}:cache:k")
        assert await store.cache_get("cache:k") == {"output": "x"}
        # a newer value in Redis (a correction through another process) wins over ours
        redis_client.set(f"{redis_prefix}:cache:k", json.dumps({"output": "fixed"}))
        assert await store.cache_get("cache:k") == {"output": "fixed"}
    finally:
        await store.close()
