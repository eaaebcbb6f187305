"""Both stores against the same contract: outcome cache, counters, demonstrations, versions;
learner leases and liveness (outages: tests/test_store_outages.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cascade.store.base import LeaseLostError, Store
from cascade.store.memory import MemoryStore
from cascade.store.redis import RedisStore
from tests.conftest import REDIS_URL
from tests.redis_cluster import RedisClusterProcs

TASK = "sentiment"


@pytest.fixture(params=["embedded", "redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The contract runs on the embedded store, one Redis, and a real Redis Cluster."""
    return str(request.param)


@pytest.fixture
async def make_store(
    store_kind: str, tmp_path: Path, redis_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[], Store]]:
    """A factory of stores over the same data (a new instance is a restarted process)."""
    made: list[Store] = []
    cluster_url = request.getfixturevalue("redis_cluster").url if store_kind == "cluster" else None

    def make() -> Store:
        if store_kind == "embedded":
            s: Store = MemoryStore(tmp_path / "data")
        elif cluster_url is not None:  # the cluster is this session's own: no cleanup
            s = RedisStore(cluster_url, tmp_path / "data", prefix=redis_prefix)
        else:
            s = RedisStore(REDIS_URL, tmp_path / "data", prefix=redis_prefix)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()


# ------------------------------------------------------------------ cache and records


async def test_cache_get_set(store: Store) -> None:
    assert await store.cache_get("cache:a") is None
    value = {"output": "positive", "label": "positive", "level": "small", "note": "héllo ✓"}
    await store.cache_set("cache:a", value, ttl_s=60)
    assert await store.cache_get("cache:a") == value
    assert await store.cache_get("cache:b") is None
    await store.cache_set("cache:a", {"output": "negative"}, ttl_s=60)  # overwrite
    assert await store.cache_get("cache:a") == {"output": "negative"}
    await store.cache_set("cache:zero", value, ttl_s=0)  # a TTL of 0 disables caching
    assert await store.cache_get("cache:zero") is None


async def test_cache_get_many_keeps_order(store: Store) -> None:
    """A request reads its keys in one call; on a cluster they hash to different slots and
    masters, and the answers still come back in the order asked."""
    keys = [f"cache:{i:064x}" for i in range(12)]
    for i, key in enumerate(keys[::2]):
        await store.cache_set(key, {"output": str(i)}, ttl_s=60)
    got = await store.cache_get_many(keys)
    assert got == [{"output": str(i // 2)} if i % 2 == 0 else None for i in range(12)]


async def test_cache_ttl_expiry(store: Store) -> None:
    await store.cache_set("cache:short", {"output": "x"}, ttl_s=1)
    await store.cache_set("cache:long", {"output": "y"}, ttl_s=60)
    assert await store.cache_get("cache:short") == {"output": "x"}
    await asyncio.sleep(1.6)
    assert await store.cache_get("cache:short") is None
    assert await store.cache_get("cache:long") == {"output": "y"}


async def test_records(store: Store) -> None:
    assert await store.get_record("req:1") is None
    await store.put_record("req:1", {"task": TASK, "input": "a"}, ttl_s=60)
    assert await store.get_record("req:1") == {"task": TASK, "input": "a"}


# ------------------------------------------------------------------ counters


async def test_counters_flush_and_read(store: Store) -> None:
    store.count(TASK, {"requests": 1, "cost": 0.25, "lvl:small:seen": 1})
    store.count(TASK, {"requests": 1, "cost": 0.5})
    store.count("chat", {"requests": 3})
    assert store.pending_counters > 0
    assert await store.read_counters(TASK) == {}  # buffered until flushed
    await store.flush_counters()
    assert store.pending_counters == 0
    assert await store.read_counters(TASK) == {"requests": 2, "cost": 0.75, "lvl:small:seen": 1}
    assert await store.read_counters("chat") == {"requests": 3}
    assert await store.read_counters("unknown") == {}
    store.count(TASK, {"requests": 1})
    await store.flush_counters()
    assert (await store.read_counters(TASK))["requests"] == 3


async def test_counters_windows(store: Store) -> None:
    now = time.time()
    store.count(TASK, {"requests": 2, "cost": 1.0}, now=now)
    store.count(TASK, {"requests": 5, "cost": 4.0}, now=now - 3 * 3600)  # three hours ago
    store.count(TASK, {"requests": 100}, now=now - 3 * 86400)  # three days ago
    await store.flush_counters()
    assert await store.read_counters(TASK) == {"requests": 107, "cost": 5.0}
    assert await store.read_counters(TASK, 300) == {"requests": 2, "cost": 1.0}
    assert await store.read_counters(TASK, 3600) == {"requests": 2, "cost": 1.0}
    assert await store.read_counters(TASK, 86400) == {"requests": 7, "cost": 5.0}


async def test_counters_shared_between_instances(make_store: Callable[[], Store]) -> None:
    a, b = make_store(), make_store()
    a.count(TASK, {"requests": 1})
    b.count(TASK, {"requests": 2})
    await a.flush_counters()
    await b.flush_counters()
    if isinstance(a, RedisStore):  # shared through Redis; the embedded store is per process
        assert await a.read_counters(TASK) == {"requests": 3}
        assert await b.read_counters(TASK) == {"requests": 3}
    else:
        assert await a.read_counters(TASK) == {"requests": 1}


async def test_background_flusher(store: Store) -> None:
    await store.start()
    store.count(TASK, {"requests": 1})
    deadline = time.monotonic() + 10
    while await store.read_counters(TASK) != {"requests": 1}:
        assert time.monotonic() < deadline, "the background flusher never flushed"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ demonstrations


def demo(i: int) -> dict[str, object]:
    return {"task": TASK, "input": f"text {i}", "label": "positive", "output": "positive"}


async def read_all(store: Store, consumer: str = "learner-a") -> list[tuple[str, dict]]:
    """Every demonstration the consumer has not read yet. On a cluster an append no replica
    confirmed within 100 ms waits in the outbox (a loaded machine's replica can be that
    slow): flushed first, as the gateway's background flusher would, so the stream holds
    every append these tests made."""
    for _ in range(50):
        if not store.demos_buffered:
            break
        await store.flush_counters()
        await asyncio.sleep(0.05)
    out: list[tuple[str, dict]] = []
    while True:
        got = await store.read_demos(TASK, consumer, count=4, block_ms=0)
        if not got:
            return out
        out.extend(got)


async def test_demos_append_read_ack(store: Store) -> None:
    for i in range(6):
        await store.append_demo(TASK, demo(i))
    await store.resume_demos(TASK, "learner-a", None)
    first = await store.read_demos(TASK, "learner-a", count=4, block_ms=0)
    rest = await read_all(store)
    items = first + rest
    assert len(first) == 4
    assert [d["input"] for _, d in items] == [f"text {i}" for i in range(6)]
    ids = [i for i, _ in items]
    assert len(set(ids)) == 6
    assert await store.demo_lag(TASK) == 6  # delivered, not acknowledged
    await store.ack_demos(TASK, ids[:4])
    assert await store.demo_lag(TASK) == 2
    await store.ack_demos(TASK, ids[4:])
    assert await store.demo_lag(TASK) == 0
    assert await read_all(store) == []
    await store.append_demo(TASK, demo(6))
    late = await read_all(store)
    assert [d["input"] for _, d in late] == ["text 6"]


async def test_read_demos_blocks_until_one_arrives(store: Store) -> None:
    await store.resume_demos(TASK, "learner-a", None)
    t0 = time.monotonic()
    assert await store.read_demos(TASK, "learner-a", count=10, block_ms=200) == []
    assert time.monotonic() - t0 >= 0.15  # it waited

    async def later() -> None:
        await asyncio.sleep(0.2)
        await store.append_demo(TASK, demo(1))

    task = asyncio.create_task(later())
    got = await store.read_demos(TASK, "learner-a", count=10, block_ms=10_000)
    await task
    assert [d["input"] for _, d in got] == ["text 1"]


async def test_resume_after_applied_id(make_store: Callable[[], Store]) -> None:
    first = make_store()
    for i in range(6):
        await first.append_demo(TASK, demo(i))
    await first.resume_demos(TASK, "learner-a", None)
    ids = [i for i, _ in await read_all(first)]
    assert len(ids) == 6
    # the learner published a version holding demos 0..2, then died before acknowledging
    await first.close()

    second = make_store()  # a restarted learner process, under another name
    await second.resume_demos(TASK, "learner-b", ids[2])
    again = await read_all(second, "learner-b")
    assert [i for i, _ in again] == ids[3:]
    assert [d["input"] for _, d in again] == ["text 3", "text 4", "text 5"]
    assert await second.demo_lag(TASK) == 3
    await second.append_demo(TASK, demo(6))
    new = await read_all(second, "learner-b")
    assert [d["input"] for _, d in new] == ["text 6"]
    await second.ack_demos(TASK, [i for i, _ in again + new])
    assert await second.demo_lag(TASK) == 0


async def test_history_of_applied_demos(store: Store) -> None:
    for i in range(6):
        await store.append_demo(TASK, demo(i))
    await store.resume_demos(TASK, "learner-a", None)
    ids = [i for i, _ in await read_all(store)]
    got = await store.history(TASK, None, ids[3], count=100)
    assert [i for i, _ in got] == ids[:4]
    assert [d["input"] for _, d in got] == [f"text {i}" for i in range(4)]
    assert [i for i, _ in await store.history(TASK, ids[1], ids[3], count=100)] == ids[2:4]
    assert [i for i, _ in await store.history(TASK, None, ids[5], count=2)] == ids[:2]
    assert await store.history(TASK, ids[3], ids[3], count=100) == []


# ------------------------------------------------------------------ versions


async def test_versions(make_store: Callable[[], Store]) -> None:
    store = make_store()
    assert await store.latest_version(TASK) == 0
    assert await store.get_version(TASK, 1) is None
    blobs = [f"version {n}".encode() * 10 for n in range(1, 8)]
    numbers = [await store.put_version(TASK, b, keep=5) for b in blobs]
    assert numbers == [1, 2, 3, 4, 5, 6, 7]
    assert await store.latest_version(TASK) == 7
    assert await store.get_version(TASK, 7) == blobs[6]
    assert await store.get_version(TASK, 3) == blobs[2]
    assert await store.get_version(TASK, 2) is None  # beyond keep: dropped
    assert await store.get_version(TASK, 1) is None
    assert await store.latest_version("chat") == 0
    reopened = make_store()  # versions survive a restart
    assert await reopened.latest_version(TASK) == 7
    assert await reopened.get_version(TASK, 5) == blobs[4]
    assert await reopened.put_version(TASK, b"eight", keep=5) == 8


# ------------------------------------------------------------------ Redis outages


@pytest.mark.slow  # waits out the connect timeouts
async def test_task_leases_fence_publishing(store: Store) -> None:
    """One learner per task: the lease is taken, renewed, refused to another, released and
    expired; a version is published only under the lease that holds the task."""
    assert await store.task_owner(TASK) is None
    a = await store.task_lease(TASK, "learner-a", 1.0)
    assert a is not None and a.startswith("learner-a#")
    assert await store.task_owner(TASK) == "learner-a"
    assert await store.task_lease(TASK, "learner-a", 1.0, token=a) == a  # renewed
    assert await store.task_lease(TASK, "learner-b", 1.0) is None
    b_chat = await store.task_lease("chat", "learner-b", 1.0)  # another task is free
    assert b_chat is not None
    assert await store.put_version(TASK, b"v1", owner=a) == 1
    with pytest.raises(LeaseLostError):
        await store.put_version(TASK, b"v2", owner=b_chat)
    assert await store.latest_version(TASK) == 1  # the refused version is not served
    await store.task_release(TASK, b_chat)  # not that lease: nothing happens
    assert await store.task_lease(TASK, "learner-b", 1.0) is None
    await store.task_release(TASK, a)
    b = await store.task_lease(TASK, "learner-b", 0.3)
    assert b is not None and b != a
    await asyncio.sleep(0.5)  # b stalled past its lease: it cannot renew, even unclaimed
    assert await store.task_owner(TASK) is None
    assert await store.task_lease(TASK, "learner-b", 1.0, token=b) is None
    a2 = await store.task_lease(TASK, "learner-a", 1.0)  # a takes the task back
    assert a2 is not None and a2 not in (a, b)
    with pytest.raises(LeaseLostError):
        await store.put_version(TASK, b"late", owner=b)
    with pytest.raises(LeaseLostError):
        await store.put_version(TASK, b"old", owner=a)  # a's earlier lease is not this one
    assert await store.get_version(TASK, await store.latest_version(TASK)) == b"v1"
    # a restarted process of the same name takes its own lease over at once
    a3 = await store.task_lease(TASK, "learner-a", 1.0)
    assert a3 is not None and a3 != a2
    assert await store.task_lease(TASK, "learner-a", 1.0, token=a2) is None


async def test_learners_alive(store: Store) -> None:
    assert await store.learners_alive("learner-a", 0.5) == 1
    assert await store.learners_alive("learner-b", 0.5) == 2
    assert await store.learners_alive("learner-a", 0.5) == 2  # the same one again
    await asyncio.sleep(0.7)  # b stopped saying so
    assert await store.learners_alive("learner-a", 0.5) == 1


async def test_a_demonstration_no_replica_confirmed_is_kept_and_retried(
    redis_cluster: RedisClusterProcs, tmp_path: Path, redis_prefix: str
) -> None:
    """On a cluster a master may die before its replica has a write it acknowledged: an
    append waits for a replica (WAIT on the same connection), and one no replica confirmed
    stays in the outbox and is retried, written once all the same."""
    store = RedisStore(redis_cluster.url, tmp_path / "data", prefix=redis_prefix)
    stream = f"{redis_prefix}:demos:{{{TASK}}}"
    try:
        await store.append_demo(TASK, demo(0))
        assert store.demos_buffered == 0  # a replica confirmed it
        replica = redis_cluster.replica_of(redis_cluster.master_of(stream))
        redis_cluster.pause(replica)  # shorter than the node timeout: no failover
        try:
            await store.append_demo(TASK, demo(1))
            assert store.demos_buffered == 1  # the master has it; no replica said so
            assert store.breaker.is_open is False  # a slow replica is not an outage
        finally:
            redis_cluster.resume(replica)
        await store.flush_counters()  # flushes the outbox: the replica confirms now
        assert store.demos_buffered == 0
        entries = redis_cluster.cluster_client().xrange(stream)
        texts = [json.loads(fields[b"d"])["input"] for _, fields in entries]
        assert texts == ["text 0", "text 1"]  # the retry found it written: not added twice
    finally:
        await store.close()


def test_a_cluster_node_whose_port_was_taken_starts_again_elsewhere(tmp_path: Path) -> None:
    """The test cluster picks its ports before starting its nodes; a port another process
    takes in between (CI once lost a whole session's cluster tests to one silent node) gets
    that node started again on fresh ports, not a failed session."""
    cluster = RedisClusterProcs(tmp_path / "cluster")
    taken = cluster.ports[2]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            cluster.start()
            assert taken not in cluster.ports and len(set(cluster.ports)) == 6
            assert len(cluster.masters()) == 3
            client = cluster.cluster_client()
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            cluster.stop()
