"""The API when its dependencies fail: the large LM unreachable or hung, Redis away."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import redis

from cascade.config import PromptConfig
from cascade.llm_server import LocalLLMServer, free_port
from cascade.prompts import render_messages
from tests.api_helpers import gateway, task_stats, wait_for_stats
from tests.conftest import RedisServer
from tests.servers import SilentServer

CHAT_PROMPT = PromptConfig(system="Answer the question in one sentence.", user="{input}")


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def test_large_unreachable_answers_degraded(tmp_path: Path, shared_backends: dict) -> None:
    # small_threshold 1.0: the small LM defers; the large LM at a closed port cannot answer
    async with gateway(tmp_path, shared_backends, closed_url(), small_threshold=1.0) as client:
        req = {"task": "chat", "input": "What is two plus two?", "max_tokens": 3}
        r = await client.post("/generate", json=req)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True
        assert body["level"] == "small"
        assert body["output"]
        small, large = body["levels"]
        assert small["name"] == "small" and small["answered"] is True
        assert large["name"] == "large" and large["answered"] is False
        assert "ConnectError" in large["error"]
        # a degraded answer is not cached: the next request tries the large LM again
        again = await client.post("/generate", json=req)
        assert again.status_code == 200
        assert again.json()["cached"] is False and again.json()["degraded"] is True
        s = await task_stats(client, "chat")
        assert s["requests"] == 2
        assert s["degraded"] == 2 and s["unavailable"] == 0
        assert s["demonstrations"] == 0  # nothing the large LM said: nothing to learn
        assert s["levels"]["large"]["failed"] == 2
        assert s["levels"]["small"]["seen"] == 2


def only_untrained_levels(cfg: dict) -> None:
    """The sentiment task without its small LM: the levels before the large LM are untrained."""
    levels = cfg["tasks"]["sentiment"]["levels"]
    cfg["tasks"]["sentiment"]["levels"] = [lv for lv in levels if lv["name"] != "small"]


async def test_large_unreachable_and_no_cheaper_answer_is_503(
    tmp_path: Path, shared_backends: dict
) -> None:
    async with gateway(
        tmp_path, shared_backends, closed_url(), edit=only_untrained_levels
    ) as client:
        r = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "'sentiment'" in detail
        assert "no level could answer" in detail
        assert "ConnectError" in detail  # why the large LM failed
        s = await task_stats(client, "sentiment")
        assert s["requests"] == 1 and s["unavailable"] == 1


async def test_large_hanging_returns_by_the_deadline(tmp_path: Path, shared_backends: dict) -> None:
    text = "Name a colour."
    # warm the small LM's KV cache for this prompt, so the deadline is spent on the large LM
    small = shared_backends["small"]
    await asyncio.to_thread(small.generate, render_messages(CHAT_PROMPT, text), 2)
    with SilentServer() as hung:
        async with gateway(
            tmp_path,
            shared_backends,
            hung.base_url,
            small_threshold=1.0,
            timeout=120.0,  # the per-call timeout alone would wait two minutes
            request_timeout=3.0,
        ) as client:
            t0 = time.monotonic()
            r = await client.post(
                "/generate", json={"task": "chat", "input": text, "max_tokens": 2}
            )
            elapsed = time.monotonic() - t0
            assert len(hung.conns) >= 1  # the large LM was called and never answered
    assert r.status_code == 200, r.text
    assert elapsed < 3.0 + 15.0  # the deadline plus a generous margin, far below 120 s
    body = r.json()
    assert body["degraded"] is True and body["level"] == "small"
    large = body["levels"][-1]
    assert large["answered"] is False
    assert any(w in large["error"] for w in ("deadline", "Timeout", "no time")), large["error"]


async def test_deadline_bounds_a_busy_small_lm(tmp_path: Path, shared_backends: dict) -> None:
    small = shared_backends["small"]
    held, release = threading.Event(), threading.Event()

    def busy() -> None:  # another request holding the model, as a long generation would
        with small._lock:
            held.set()
            release.wait(8.0)

    worker = threading.Thread(target=busy)
    async with gateway(
        tmp_path, shared_backends, closed_url(), small_threshold=1.0, request_timeout=1.0
    ) as client:
        worker.start()
        try:
            assert held.wait(10)
            t0 = time.monotonic()
            r = await client.post(
                "/generate", json={"task": "chat", "input": "Hi", "max_tokens": 1}
            )
            elapsed = time.monotonic() - t0
        finally:
            release.set()
            worker.join()
    assert elapsed < 1.0 + 4.0  # the deadline plus a margin, well before the model is free
    assert r.status_code == 503, r.text  # neither level answered in time
    assert "deadline exceeded" in r.json()["detail"]


async def test_redis_outage(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    private_redis: RedisServer,
) -> None:
    # small_threshold 0: the small LM answers, so requests need nothing but Redis and SmolLM2
    async with gateway(
        tmp_path,
        shared_backends,
        smol_server.base_url,
        redis_url=private_redis.url,
        prefix="cgapi",
        small_threshold=0.0,
    ) as client:

        async def ask(text: str) -> httpx.Response:
            return await client.post(
                "/generate", json={"task": "chat", "input": text, "max_tokens": 2}
            )

        assert (await ask("Hi")).status_code == 200
        await wait_for_stats(client, "chat", lambda s: s["requests"] == 1)

        private_redis.stop()
        r = await ask("Hello there")
        assert r.status_code == 200, r.text
        assert r.json()["cached"] is False  # new: answered afresh
        r = await ask("Hi")  # a repeat: this process's own recent outcomes answer it
        assert r.status_code == 200, r.text
        assert r.json()["cached"] is True
        # the process still serves: reported, but it stays in rotation (every replica shares
        # the store, and it knows whether API keys exist)
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "degraded"
        assert r.json()["down"] == ["store"]
        assert r.json()["checks"]["store"]["ok"] is False

        private_redis.start()  # same port, same data
        s = await wait_for_stats(client, "chat", lambda s: s["requests"] == 3)
        assert s["cache_hits"] == 1
        assert s["levels"]["small"]["answered"] == 2
        deadline = time.monotonic() + 20
        while (await client.get("/readyz")).json()["status"] != "ready":
            assert time.monotonic() < deadline, "never ready again after Redis came back"
            await asyncio.sleep(0.2)
        # the cache works again: the next repeat is a hit once the breaker has closed
        r = await ask("Hi")
        while not r.json()["cached"]:
            assert time.monotonic() < deadline, "the cache never came back"
            await asyncio.sleep(0.5)
            r = await ask("Hi")
    client_ = redis.Redis(port=private_redis.port)
    try:
        assert float(client_.hget("cgapi:stats:chat", "requests") or 0) >= 4
    finally:
        client_.close()
