"""Scale-out without Docker: three real gateway processes and one learner process share one
real Redis (AOF on), the large LM is the real SmolLM2 llama.cpp server, and requests travel
over real HTTP.

What the deployment promises and this test checks:

- every demonstration any gateway writes is learned exactly once, even when the learner is
  SIGKILLed while it holds demonstrations it has read but not yet published, and restarted;
- every gateway picks up the learner's newest version within a bounded time;
- ``/admin/stats`` shows the same totals from every gateway (counters live in Redis), while each
  process's own ``/metrics`` shows only the third it served.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from cascade.llm_server import LocalLLMServer, free_port
from tests.conftest import ADMIN_TOKEN, RedisServer
from tests.fleet import REVIEWS, TASK, FleetProbe, fleet_env, gateway_proc
from tests.processes import Proc, together, until

pytestmark = pytest.mark.slow  # three gateway processes and a learner process

N_GATEWAYS = 3
N_REQUESTS = 60
ADMIN = {"x-admin-token": ADMIN_TOKEN}


@pytest.fixture
def cluster_env(
    tmp_path: Path, private_redis: RedisServer, smol_server: LocalLLMServer
) -> Iterator[dict[str, str]]:
    yield fleet_env(tmp_path, smol_server.base_url, private_redis.url, "scaleout")
    keep = os.environ.get("CASCADE_KEEP_LOGS")
    if keep:  # debugging aid: copy the processes' logs somewhere that outlives tmp_path
        shutil.copytree(tmp_path / "logs", Path(keep), dirs_exist_ok=True)


async def test_three_gateways_one_learner_share_one_redis(
    tmp_path: Path, cluster_env: dict[str, str], private_redis: RedisServer
) -> None:
    t_start = time.monotonic()
    logs = tmp_path / "logs"
    logs.mkdir()
    r = aioredis.Redis.from_url(private_redis.url)
    stream = f"{cluster_env['CASCADE_REDIS_PREFIX']}:demos:{TASK}"

    def learner_proc(n: int) -> Proc:
        env = {**cluster_env, "CASCADE_DATA_DIR": str(tmp_path / "learner")}
        return Proc(f"learner#{n}", ["learn"], env, logs / f"learner-{n}.log")

    ports = [free_port() for _ in range(N_GATEWAYS)]
    gateways = [gateway_proc(i, port, cluster_env, tmp_path) for i, port in enumerate(ports)]
    learner = learner_proc(1)
    procs = [*gateways, learner]

    probe = FleetProbe(r, stream, f"{cluster_env['CASCADE_REDIS_PREFIX']}:ver:{TASK}")
    latest, pending = probe.latest, probe.pending

    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=60, headers=ADMIN)
        for p in ports
    ]
    try:
        await probe.start(procs, clients)
        t_ready = time.monotonic()

        # ---- the stream: round-robin over the three gateways, three requests in flight
        inputs = REVIEWS[:N_REQUESTS]
        assert len(set(inputs)) == N_REQUESTS
        sent: list[int] = []  # request indices, in order of completion
        answers: dict[int, dict[str, Any]] = {}

        async def worker(w: int) -> None:
            for i in range(w, N_REQUESTS, N_GATEWAYS):
                resp = await clients[w].post("/generate", json={"task": TASK, "input": inputs[i]})
                assert resp.status_code == 200, f"gateway-{w}: {resp.status_code} {resp.text}"
                answers[i] = resp.json()
                sent.append(i)

        chaos: dict[str, Any] = {}

        async def kill_and_restart_learner() -> None:
            nonlocal learner
            # mid-stream, once the learner has published a version and holds demonstrations
            # it has read (delivered, unacknowledged) but whose version is not stored yet
            await until(
                "a first version",
                lambda: _truthy(latest(), lambda v: v >= 1 and len(sent) >= N_REQUESTS // 4),
                60,
                procs,
            )
            await until("the learner holding unpublished demos", pending, 30, procs, 0.005)
            learner.kill(signal.SIGKILL)
            chaos.update(sent=len(sent), pending=await pending(), version=await latest())
            chaos["xlen"] = await r.xlen(stream)
            procs.remove(learner)
            # the stream goes on without a learner: the gateways keep appending
            await until(
                "more requests while the learner is down",
                lambda: _const(len(sent) >= chaos["sent"] + N_REQUESTS // 4),
                120,
                procs,
            )
            learner = learner_proc(2).start()
            procs.append(learner)
            chaos["restarted_at"] = len(sent)

        t0 = time.monotonic()
        await together(*(worker(w) for w in range(N_GATEWAYS)), kill_and_restart_learner())
        t_stream = time.monotonic() - t0
        assert sorted(sent) == list(range(N_REQUESTS))
        assert 0 < chaos["sent"] < chaos["restarted_at"] < N_REQUESTS, chaos
        assert chaos["pending"] > 0, chaos  # the kill really caught unpublished demonstrations
        for i, body in answers.items():
            assert body["label"] in ("positive", "negative"), body
            assert body["cached"] is False and body["degraded"] is False, (i, body)
            if body["level"] != "large":  # a cheap level answers only with learned parameters
                assert body["level"] in ("logistic", "encoder") and body["version"] >= 1, body
        by_large = sum(body["level"] == "large" for body in answers.values())
        assert by_large >= N_REQUESTS // 2, f"only {by_large} demonstrations: too few to test"

        # ---- every demonstration is written once, and learned exactly once
        written = await r.xlen(stream)
        assert written == by_large  # one per large-LM answer, none lost or doubled on the way
        last_id = (await r.xrevrange(stream, count=1))[0][0].decode()

        version, state = await until(
            "the learner to catch up", lambda: probe.learned_up_to(last_id), 60, procs, 0.1
        )
        # exactly once: a demonstration re-delivered after the kill is not counted twice, and
        # none is lost (the count reached the total and the last id is the stream's last)
        assert state.demos == written, (state.meta, chaos)
        assert version > chaos["version"]
        assert state.task == TASK and state.labels == ["positive", "negative"]
        assert state.levels, "the learner published no level parameters"
        # the restarted learner resumed from the version stored before the kill, not from zero
        resumed = re.findall(
            r"task sentiment resumes after demonstration (\S+) \(version (\d+)\)",
            learner.log.read_text(),
        )
        assert resumed, learner.tail()
        assert int(resumed[0][1]) == chaos["version"] >= 1, (resumed, chaos)

        # ---- every gateway serves the new version within a bounded time
        t1 = time.monotonic()

        async def same_version() -> Any:
            stats = await asyncio.gather(*(c.get("/admin/stats") for c in clients))
            got = [s.json()["tasks"][TASK] for s in stats]
            ok = all(g["version"] == version and g["requests"] == N_REQUESTS for g in got)
            return got if ok else None

        per_gateway = await until("all gateways on the new version", same_version, 10, procs)
        t_converge = time.monotonic() - t1
        for g in per_gateway:
            # the same totals from every gateway: counters are shared through Redis
            assert g["requests"] == N_REQUESTS
            assert g["demonstrations"] == by_large
            assert g["large_llm_calls"] == by_large
            assert g["cache_hits"] == 0 and g["degraded"] == 0 and g["unavailable"] == 0
            assert g["learner_lag"] == 0
            assert g["levels"]["large"]["answered"] == by_large
            assert sum(lv["answered"] for lv in g["levels"].values()) == N_REQUESTS
        # ... while each process itself served only its own third
        for w, c in enumerate(clients):
            m = (await c.get("/metrics")).text
            own = _metric(m, "cascade_requests_total", task=TASK, outcome="answered")
            assert own == N_REQUESTS // N_GATEWAYS, f"gateway-{w} served {own}"

        blob = await r.get(f"{cluster_env['CASCADE_REDIS_PREFIX']}:ver:{TASK}:{version}")
        sizes = {
            "version_blob_kb": round(len(blob) / 1024),
            "stream_kb_per_demo": round(await r.memory_usage(stream) / written / 1024, 1),
        }
        timings = {
            "startup_s": round(t_ready - t_start, 1),
            "stream_s": round(t_stream, 1),
            "converge_s": round(t_converge, 2),
            "total_s": round(time.monotonic() - t_start, 1),
        }
        print(
            f"\nscale-out: {timings} {sizes}, chaos: {chaos}, version {version}, {by_large} demos"
        )
    finally:
        for c in clients:
            await c.aclose()
        for p in [*gateways, learner]:
            p.stop()
        await r.aclose()


async def _truthy(value: Awaitable[Any], pred: Callable[[Any], bool]) -> bool:
    return pred(await value)


async def _const(value: bool) -> bool:
    return value


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition, by name and (all of) its labels."""
    total = None
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    assert total is not None, f"{name}{labels} not in /metrics"
    return total
