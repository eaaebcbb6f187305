"""Two gateway processes and a learner on a real Redis Cluster (3 masters + 3 replicas), with
the master that holds the task's keys SIGKILLed mid-stream.

What an operator on managed Redis in cluster mode is promised, and this test checks:

- everything the gateway keeps in Redis works on a cluster: the exact cache across gateways,
  shared counters, demonstrations and versions, API keys, rate limits across processes, and
  ``/feedback`` corrections;
- a master dies, its replica takes over: no 5xx once the cluster has healed, every
  demonstration written once and learned exactly once, and the learner goes on publishing.

The store's contract itself (every call, the same answers as on one Redis) runs on a cluster
in tests/test_store.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from cascade.llm_server import LocalLLMServer, free_port
from tests.conftest import ADMIN_TOKEN
from tests.fleet import LEARNER, REVIEWS, TASK, FleetProbe, fleet_env, gateway_proc
from tests.processes import Proc, _exe, together, until
from tests.redis_cluster import RedisClusterProcs

pytestmark = pytest.mark.slow  # a six-node cluster, two gateways and a learner

N_REQUESTS = 48
PREFIX = "cgcluster"


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterProcs]:
    """This test's own cluster: it kills one of its masters."""
    cluster = RedisClusterProcs(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


def _create_key(env: dict[str, str], name: str, rpm: int | None = None) -> str:
    args = [*_exe(), "keys", "create", "--name", name, *(["--rpm", str(rpm)] if rpm else [])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


async def test_two_gateways_and_a_learner_ride_out_a_master_failover(
    tmp_path: Path, own_cluster: RedisClusterProcs, smol_server: LocalLLMServer
) -> None:
    env = fleet_env(tmp_path, smol_server.base_url, own_cluster.url, PREFIX)
    stream = f"{PREFIX}:demos:{{{TASK}}}"  # the task is the hash tag: one slot per task
    main_key = _create_key(env, "main")
    limited_key = _create_key(env, "limited", rpm=3)
    r = aioredis.RedisCluster.from_url(f"redis://127.0.0.1:{own_cluster.ports[0]}")
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = [free_port() for _ in range(2)]
    gateways = [gateway_proc(i, port, env, tmp_path) for i, port in enumerate(ports)]
    learner = Proc(
        "learner", ["learn"], {**env, "CASCADE_DATA_DIR": str(tmp_path / "l")}, logs / "l.log"
    )
    procs = [*gateways, learner]
    auth = {"authorization": f"Bearer {main_key}"}
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=60, headers=auth) for p in ports
    ]
    admin = {"x-admin-token": ADMIN_TOKEN}

    probe = FleetProbe(r, stream, f"{PREFIX}:ver:{{{TASK}}}")
    latest = probe.latest

    try:
        await probe.start(procs, clients)

        # ---- the stream, one worker per gateway; a master dies a third of the way in
        inputs = REVIEWS[:N_REQUESTS]
        answers: dict[int, dict[str, Any]] = {}
        statuses: list[tuple[float, int, str]] = []  # (when, status, body) of every response

        async def worker(w: int) -> None:
            for i in range(w, N_REQUESTS, 2):
                resp = await clients[w].post("/generate", json={"task": TASK, "input": inputs[i]})
                statuses.append((time.monotonic(), resp.status_code, resp.text[:200]))
                if resp.status_code == 200:
                    answers[i] = resp.json()

        chaos: dict[str, Any] = {}

        async def kill_the_tasks_master() -> None:
            await until(
                "a first version and a third of the stream",
                lambda: _ready_for_chaos(latest(), len(statuses) >= N_REQUESTS // 3),
                120,
                procs,
            )
            port = own_cluster.master_of(stream)
            chaos.update(port=port, version=await latest(), sent=len(statuses))
            chaos["killed_at"] = time.monotonic()
            own_cluster.kill(port)
            chaos["new_master"] = await asyncio.to_thread(
                own_cluster.until_taken_over, stream, port, 60
            )
            chaos["healed_at"] = time.monotonic()
            chaos["failover_s"] = round(chaos["healed_at"] - chaos["killed_at"], 2)

        await together(worker(0), worker(1), kill_the_tasks_master())
        after = [s for s in statuses if s[0] > chaos["healed_at"]]
        assert after, "no request was sent after the failover: the test proved nothing"
        assert [s for s in after if s[1] >= 500] == [], after
        failed = [s for s in statuses if s[1] != 200]
        assert failed == [], f"{len(failed)} requests failed during the failover: {failed}"
        by_large = sum(a["level"] == "large" for a in answers.values())
        assert by_large >= N_REQUESTS // 2, f"only {by_large} demonstrations: too few to test"

        # ---- every demonstration written once (the outbox flushes what the failover
        # bounced), and learned exactly once by the learner, which kept publishing
        async def all_written() -> bool:
            return int(await r.xlen(stream)) >= by_large

        await until("every demonstration in the stream", all_written, 60, procs, 0.2)
        written = int(await r.xlen(stream))
        assert written == by_large, (written, by_large, chaos)
        last_id = (await r.xrevrange(stream, count=1))[0][0].decode()

        version, state = await until(
            "the learner to catch up", lambda: probe.learned_up_to(last_id), 90, procs, 0.2
        )
        assert state.demos == written, (state.meta, chaos)
        assert version > chaos["version"], (version, chaos)

        # ---- both gateways on the new version, the same shared figures on both
        async def same_stats() -> Any:
            stats = await asyncio.gather(*(c.get("/admin/stats", headers=admin) for c in clients))
            got = [s.json()["tasks"][TASK] for s in stats]
            ok = all(g["version"] == version and g["requests"] == N_REQUESTS for g in got)
            return got if ok and got[0] == got[1] else None

        per_gateway = await until("both gateways agree", same_stats, 30, procs, 0.2)
        for g in per_gateway:
            assert g["demonstrations"] == by_large and g["large_llm_calls"] == by_large
            assert g["degraded"] == 0 and g["unavailable"] == 0, g
            assert g["learner_lag"] == 0
            assert g["learner"] == LEARNER  # the lease lives in the task's slot too

        # ---- the exact cache: gateway 1 answers a request gateway 0 served, from the cache
        first = answers[0]
        again = await clients[1].post("/generate", json={"task": TASK, "input": inputs[0]})
        assert again.status_code == 200 and again.json()["cached"] is True, again.text
        assert again.json()["label"] == first["label"]

        # ---- /feedback on one gateway corrects the answer the other one serves
        other = "negative" if first["label"] == "positive" else "positive"
        fb = await clients[0].post(
            "/feedback", json={"request_id": first["request_id"], "label": other}
        )
        assert fb.status_code == 200, fb.text
        corrected = await clients[1].post("/generate", json={"task": TASK, "input": inputs[0]})
        assert corrected.json()["label"] == other, corrected.text

        # ---- a key's rate limit holds across both gateways (one counter in the cluster)
        limited = {"authorization": f"Bearer {limited_key}"}
        if time.time() % 60 > 50:  # the limit counts per calendar minute: stay inside one
            await asyncio.sleep(61 - time.time() % 60)
        codes = [
            (
                await clients[i % 2].post(
                    "/generate", json={"task": TASK, "input": inputs[1]}, headers=limited
                )
            ).status_code
            for i in range(5)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes
        print(f"\ncluster failover: {chaos}, version {version}, {by_large} demonstrations")
    finally:
        for c in clients:
            await c.aclose()
        for p in procs:
            p.stop()
        await r.aclose()


async def _ready_for_chaos(version: Any, enough_sent: bool) -> bool:
    return await version >= 1 and enough_sent
