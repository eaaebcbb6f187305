"""The gateway when things around it fail or pile up: authorisation fails closed without the
store, overload is shed with 503 + Retry-After, readiness holds under ordinary load, and a
killed gateway leaves no llama.cpp server behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.keys import create_key, revoke_key
from cascade.llm_server import LocalLLMServer, free_port
from cascade.store.redis import RedisStore
from tests.api_helpers import gateway, task_stats
from tests.conftest import MODELS, SMOL, RedisServer
from tests.servers import SilentServer

# private Redis outages, hung upstreams, llama.cpp servers started and killed
pytestmark = pytest.mark.slow

SENT = {"task": "sentiment", "input": "a warm, funny, wonderful film"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_started_without_its_store_it_serves_no_one(
    tmp_path: Path, shared_backends: dict
) -> None:
    """Whether keys exist cannot be known: every request is refused with 503, none answered."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    closed = f"http://127.0.0.1:{free_port()}/v1"
    async with gateway(tmp_path, shared_backends, closed, redis_url=dead) as client:
        for headers in ({}, bearer("cg-bogus"), bearer("cg-" + "x" * 32)):
            r = await client.post("/generate", json=SENT, headers=headers)
            assert r.status_code == 503, r.text
            assert "store is unreachable" in r.json()["detail"]
            assert r.headers["retry-after"] == "1"
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "cascade/sentiment", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503 and "error" in r.json()
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["store"]["required"] is True


async def test_keys_hold_through_a_redis_outage(
    tmp_path: Path, shared_backends: dict, private_redis: RedisServer
) -> None:
    """Known keys keep working, revoked ones stay refused, unknown ones are not let in."""
    store = RedisStore(private_redis.url, tmp_path / "keys", prefix="cgauth")
    good, _ = await create_key(store, "good")
    doomed, doomed_rec = await create_key(store, "doomed")
    assert await revoke_key(store, doomed_rec["id"])
    await store.close()
    closed = f"http://127.0.0.1:{free_port()}/v1"
    async with gateway(
        tmp_path,
        shared_backends,
        closed,
        redis_url=private_redis.url,
        prefix="cgauth",
        small_threshold=0.0,
    ) as client:
        chat = {"task": "chat", "input": "Hi", "max_tokens": 2}
        assert (await client.post("/generate", json=chat, headers=bearer(good))).status_code == 200
        r = await client.post("/generate", json=chat, headers=bearer(doomed))
        assert r.status_code == 403
        private_redis.stop()
        r = await client.post("/generate", json=chat, headers=bearer(good))
        assert r.status_code == 200, r.text
        assert (
            await client.post("/generate", json=chat, headers=bearer(doomed))
        ).status_code == 403
        r = await client.post("/generate", json=chat)
        assert r.status_code == 401  # keys are known to exist
        r = await client.post("/generate", json=chat, headers=bearer("cg-never-seen"))
        assert r.status_code == 503, r.text  # cannot be checked: refused, never answered
        await asyncio.sleep(5.5)  # past the key cache's freshness: stale answers still hold
        assert (await client.post("/generate", json=chat, headers=bearer(good))).status_code == 200
        r = await client.post("/generate", json=chat, headers=bearer(doomed))
        assert r.status_code == 403
        private_redis.start()
        deadline = time.monotonic() + 20
        while True:
            r = await client.post("/generate", json=chat, headers=bearer("cg-never-seen"))
            if r.status_code == 401:
                break
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, "unknown keys never checked after Redis returned"
            await asyncio.sleep(0.3)


def busy(cfg: dict[str, Any]) -> None:
    cfg["defaults"].update(max_inflight=1, queue_timeout_s=0.3, request_timeout_s=8)


async def test_overload_is_shed_with_retry_after(tmp_path: Path, shared_backends: dict) -> None:
    """One request holds the only turn (its large LM hangs); the others are refused quickly
    instead of queueing behind it."""
    with SilentServer() as hung:
        async with gateway(tmp_path, shared_backends, hung.base_url, edit=busy) as client:
            reqs = [{"task": "chat", "input": f"Question {i}?", "max_tokens": 2} for i in range(3)]
            t0 = time.monotonic()
            first = asyncio.create_task(client.post("/generate", json=reqs[0]))
            await asyncio.sleep(0.2)  # it holds the turn now
            shed = await asyncio.gather(*(client.post("/generate", json=b) for b in reqs[1:]))
            assert time.monotonic() - t0 < 2.0  # refused long before the hung call ends
            for r in shed:
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "1"
                assert "overloaded" in r.json()["detail"]
            r = await first
            assert r.status_code == 200 and r.json()["degraded"] is True
            s = await task_stats(client, "chat")
            assert s["shed"] == 2 and s["requests"] == 3


def large_only(cfg: dict[str, Any]) -> None:
    """Chat goes straight to the large LM: its requests queue there, not on the small LM."""
    cfg["tasks"]["chat"]["levels"] = cfg["tasks"]["chat"]["levels"][-1:]


async def test_ready_under_eight_concurrent_requests(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    """Eight generations queue on one llama.cpp server; readiness stays 200 throughout."""
    async with gateway(tmp_path, shared_backends, smol_server.base_url, edit=large_only) as client:
        assert (await client.get("/readyz")).status_code == 200  # idle: probed, and up
        reqs = [
            client.post(
                "/generate",
                json={"task": "chat", "input": f"Tell me about the number {i}.", "max_tokens": 24},
            )
            for i in range(8)
        ]
        load = asyncio.gather(*reqs)
        codes = []
        while not load.done():
            codes.append((await client.get("/readyz")).status_code)
            await asyncio.sleep(0.2)
        assert all(r.status_code == 200 for r in await load)
        assert len(codes) >= 3 and set(codes) == {200}, codes


SERVE_ONE = """
import sys, time
from pathlib import Path
from cascade.llm_server import LocalLLMServer
s = LocalLLMServer(Path(sys.argv[1]), "smol", n_threads=1, pid_file=Path(sys.argv[2])).start()
print(s.proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def test_killed_parent_takes_its_llm_server_along(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SERVE_ONE, str(MODELS / SMOL), str(tmp_path / "llm.pid")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"llama_cpp.server {child} outlived its parent"
        time.sleep(0.1)


def test_a_stale_server_of_ours_is_stopped_not_doubled(tmp_path: Path) -> None:
    pid_file = tmp_path / "llm.pid"
    first = LocalLLMServer(MODELS / SMOL, "smol", n_threads=1, pid_file=pid_file).start()
    assert first.proc is not None
    stale = first.proc.pid
    first.pid_file = None  # as if its gateway had died without cleaning up
    with LocalLLMServer(MODELS / SMOL, "smol", n_threads=1, pid_file=pid_file) as second:
        assert second.proc is not None
        assert first.proc.wait(timeout=10) is not None  # the stale one was stopped
        assert pid_file.read_text().split()[0] == str(second.proc.pid)
        assert httpx.get(f"{second.base_url}/models", timeout=5).status_code == 200
    assert not pid_file.exists()
    assert not _alive(stale)


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    """The pid file names a process that is not our server: it must not be touched."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "llm.pid"
        pid_file.write_text(f"{bystander.pid}\n")
        with LocalLLMServer(MODELS / SMOL, "smol", n_threads=1, pid_file=pid_file):
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stopped_server_removes_its_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "llm.pid"
    with LocalLLMServer(MODELS / SMOL, "smol", n_threads=1, pid_file=pid_file) as server:
        assert server.proc is not None and pid_file.exists()
    assert not pid_file.exists()
