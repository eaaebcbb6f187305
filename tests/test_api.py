"""The HTTP API end to end: real app, real Redis (or the embedded store), SmolLM2 in-process
as the small LM and behind llama.cpp's server as the large LM."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from cascade.llm_server import LocalLLMServer, free_port
from tests.api_helpers import ALL_LEVELS_COST, LEVELS, gateway, task_stats, wait_for_stats
from tests.conftest import REDIS_URL

WARM = "a warm film"  # SmolLM2 answers this with a label, in-process and over HTTP


def check_trace(trace: dict, name: str) -> None:
    assert trace["name"] == name
    assert isinstance(trace["answered"], bool)
    assert trace["confidence"] is None or 0.0 <= trace["confidence"] <= 1.0
    assert trace["latency_ms"] >= 0.0


async def test_answer_cache_and_stats(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, settings=store_settings
    ) as client:
        r = await client.post("/generate", json={"task": "sentiment", "input": WARM})
        assert r.status_code == 200, r.text
        body = r.json()
        assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
        assert body["task"] == "sentiment"
        assert body["level"] == "large"  # small_threshold 1.0: every request reaches it
        assert body["label"] in ("positive", "negative")
        assert body["output"] == body["label"]
        assert body["cached"] is False and body["degraded"] is False
        assert body["cost"] == pytest.approx(ALL_LEVELS_COST)
        assert [t["name"] for t in body["levels"]] == LEVELS
        for trace, name in zip(body["levels"], LEVELS, strict=True):
            check_trace(trace, name)
        logistic, encoder, small, large = body["levels"]
        for untrained in (logistic, encoder):
            assert untrained["ready"] is False and untrained["confidence"] is None
            assert untrained["answered"] is False
        assert small["answered"] is False and small["ready"] is True
        assert large["answered"] is True and large["error"] is None
        assert r.headers["x-cascade-level"] == "large"
        assert r.headers["x-cascade-cached"] == "false"

        # the same input (whitespace aside) is answered from the cache, at no cost
        r2 = await client.post("/generate", json={"task": "sentiment", "input": "  a  warm film "})
        assert r2.status_code == 200, r2.text
        hit = r2.json()
        assert hit["cached"] is True and hit["cost"] == 0.0
        assert (hit["output"], hit["label"], hit["level"]) == (
            body["output"],
            body["label"],
            "large",
        )
        assert hit["request_id"] != body["request_id"]
        assert r2.headers["x-cascade-cached"] == "true"

        # cache: false neither reads nor writes the cache
        r3 = await client.post(
            "/generate", json={"task": "sentiment", "input": WARM, "cache": False}
        )
        assert r3.status_code == 200, r3.text
        assert r3.json()["cached"] is False
        assert r3.json()["cost"] == pytest.approx(ALL_LEVELS_COST)
        assert r3.json()["label"] == body["label"]

        s = await task_stats(client, "sentiment")
        assert s["requests"] == 3
        assert s["cache_hits"] == 1
        assert s["large_llm_calls"] == 2
        assert s["demonstrations"] == 2
        assert s["degraded"] == 0 and s["unavailable"] == 0
        assert s["cost"] == pytest.approx(2 * ALL_LEVELS_COST)
        assert s["cost_llm_only"] == pytest.approx(3.0)  # what the large LM alone would cost
        assert s["cost_saved"] == pytest.approx(3.0 - 2 * ALL_LEVELS_COST)
        for name in LEVELS:
            lv = s["levels"][name]
            assert lv["seen"] == 2, name
            assert lv["answered"] == (2 if name == "large" else 0), name
            assert lv["deferred"] == (0 if name == "large" else 2), name
        assert (await task_stats(client, "sentiment", "5m"))["requests"] == 3
        assert (await task_stats(client, "chat"))["requests"] == 0
        bad = await client.get("/admin/stats", params={"window": "week"})
        assert bad.status_code == 422 and "5m" in bad.json()["detail"]

        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        ready = r.json()
        assert ready["status"] == "ready" and ready["down"] == []
        assert ready["checks"]["store"]["ok"] is True
        assert ready["checks"]["store"]["kind"] == store_kind
        assert ready["checks"]["large:sentiment"]["url"] == smol_server.base_url


async def test_two_instances_share_cache_and_counters(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, redis_prefix: str
) -> None:
    url = smol_server.base_url
    async with (
        gateway(
            tmp_path / "a", shared_backends, url, redis_url=REDIS_URL, prefix=redis_prefix
        ) as a,
        gateway(
            tmp_path / "b", shared_backends, url, redis_url=REDIS_URL, prefix=redis_prefix
        ) as b,
    ):
        ra = await a.post("/generate", json={"task": "sentiment", "input": WARM})
        assert ra.status_code == 200 and ra.json()["cached"] is False
        rb = await b.post("/generate", json={"task": "sentiment", "input": WARM})
        assert rb.status_code == 200
        assert rb.json()["cached"] is True  # the other process's answer, through Redis
        assert rb.json()["label"] == ra.json()["label"]
        for client in (a, b):
            s = await wait_for_stats(client, "sentiment", lambda s: s["requests"] == 2)
            assert s["cache_hits"] == 1
            assert s["large_llm_calls"] == 1
            assert s["cost"] == pytest.approx(ALL_LEVELS_COST)
            assert s["cost_llm_only"] == pytest.approx(2.0)
            assert s["levels"]["large"]["answered"] == 1


async def test_readyz_names_what_is_down(tmp_path: Path, shared_backends: dict) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with gateway(tmp_path, shared_backends, closed, redis_url=dead_redis) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not ready"
        assert sorted(body["down"]) == ["large:chat", "large:sentiment", "store"]
        # started without its store: it cannot tell whether API keys exist, so it cannot serve
        assert body["checks"]["store"] == {
            "ok": False,
            "required": True,
            "kind": "redis",
            "url": dead_redis,
            "cluster": False,
        }
        assert body["checks"]["large:chat"]["ok"] is False
        assert body["checks"]["large:chat"]["url"] == closed
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, shared_backends: dict, smol_server):
    """One gateway for the input checks; small_threshold 0: the small LM answers what it can."""
    root = tmp_path_factory.mktemp("api-input")
    async with gateway(root, shared_backends, smol_server.base_url, small_threshold=0.0) as c:
        yield c


JSON = {"content-type": "application/json"}


def body(**fields: object) -> dict[str, object]:
    return {"task": "sentiment", "input": "fine", **fields}


# (request body, expected status, field the error names (422), words in the detail)
BAD = {
    "malformed JSON": (b'{"task": "sentiment", "input": ', 422, "body", ["malformed JSON"]),
    "input not a string": (body(input=123), 422, "input", ["string"]),
    "max_tokens not a number": (body(max_tokens="lots"), 422, "max_tokens", ["integer"]),
    "max_tokens zero": (body(max_tokens=0), 422, "max_tokens", ["greater than"]),
    "temperature too high": (body(temperature=5), 422, "temperature", ["less than"]),
    "cache not a bool": (body(cache="maybe"), 422, "cache", ["boolean"]),
    "task missing": ({"input": "fine"}, 422, "task", ["required"]),
    "input missing": ({"task": "sentiment"}, 422, "input", ["required"]),
    "empty input": (body(input=""), 422, "input", ["at least 1"]),
    "whitespace input": (body(input=" \n\t "), 422, "input", ["non-whitespace"]),
    "unknown field": (body(temprature=0.5), 422, "temprature", ["not permitted"]),
    "not an object": (b'["sentiment", "fine"]', 422, "body", ["dictionary"]),
    "empty body": (b"", 422, "body", ["required"]),
    "unknown task": (body(task="summarise"), 404, None, ["'summarise'", "chat, sentiment"]),
    "input over the limit": (body(input="x" * 2049), 413, None, ["2049 bytes", "2048"]),
    "multi-byte input over the limit": (body(input="é" * 1100), 413, None, ["2200 bytes"]),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input(client: httpx.AsyncClient, case: str) -> None:
    payload, status, field, words = BAD[case]
    if isinstance(payload, bytes):
        r = await client.post("/generate", content=payload, headers=JSON)
    else:
        r = await client.post("/generate", json=payload)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for w in words:
        assert w in detail, detail
    if field is not None:
        assert field in [e["field"] for e in r.json()["errors"]]
        assert detail.startswith(f"{field}:")


async def test_huge_body_is_refused_without_harm(client: httpx.AsyncClient) -> None:
    huge = b'{"task": "sentiment", "input": "' + b"x" * 5_000_000 + b'"}'
    r = await client.post("/generate", content=huge, headers=JSON)
    assert r.status_code == 413
    assert "2048" in r.json()["detail"]
    assert (await client.get("/healthz")).status_code == 200
    r = await client.post("/generate", json={"task": "nope", "input": "still serving"})
    assert r.status_code == 404


async def test_huge_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():
        for _ in range(80):
            yield b"x" * 65_536

    r = await client.post("/generate", content=chunks(), headers=JSON)
    assert r.status_code == 413


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_curl_style_body_is_read_as_json(
    client: httpx.AsyncClient, ctype: str | None
) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    # an unknown task's 404 (not a 422) shows that the body was parsed as JSON
    r = await client.post("/generate", content=b'{"task": "nope", "input": "x"}', headers=headers)
    assert r.status_code == 404, r.text


async def test_curl_style_request_is_answered(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/generate",
        content=b'{"task": "chat", "input": "Hi!", "max_tokens": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["level"] == "small"  # small_threshold 0: the small LM answers
    assert r.json()["output"]
