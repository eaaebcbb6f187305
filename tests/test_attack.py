"""What an outsider sends, over real HTTP: lone surrogates, wrong types, odd bytes, nesting,
prompts past the model's context. Every one gets a 4xx in its API's error shape, the
connection stays usable, and nothing reaches a model or the counters as an outage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api_helpers import Live, live_gateway_fixture
from tests.conftest import ADMIN_TOKEN


def roomy_inputs(cfg: dict[str, Any]) -> None:
    """Inputs up to 32 KB (the default), so a prompt can pass the models' 2,048-token context
    while its body stays under the gateway's byte limit."""
    cfg["defaults"]["max_input_bytes"] = 32_768


live = live_gateway_fixture("attack", edit=roomy_inputs)


@pytest.fixture(scope="module")
def http(live: Live) -> Iterator[httpx.Client]:
    """One keep-alive connection for the whole table: a bad request must not drop it."""
    with httpx.Client(
        base_url=live.url, timeout=120, headers={"x-admin-token": ADMIN_TOKEN}
    ) as client:
        yield client


def raw(obj: Any) -> bytes:
    """JSON as a client may send it: ``\\udc00`` stays an escape, as any JSON encoder writes
    a lone surrogate (httpx's own encoder would refuse it)."""
    return json.dumps(obj, ensure_ascii=True).encode()


LONE = "lone \udc00 half"
SENT = {"model": "cascade/sentiment", "messages": [{"role": "user", "content": "fine"}]}
CHAT = {"model": "cascade/chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def chat(**fields: Any) -> dict[str, Any]:
    return {**SENT, **fields}


def msgs(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return chat(messages=[{"role": r, "content": c} for r, c in pairs])


V1 = "/v1/chat/completions"
POLICY = "/admin/tasks/sentiment/policy"

# name -> (method, path, body (bytes as sent), status, words the message must contain)
# fmt: off
BAD: dict[str, tuple[str, str, bytes | None, int, list[str]]] = {
    # lone surrogates: each text field of each route
    "generate: surrogate input": (
        "POST", "/generate", raw({"task": "sentiment", "input": LONE}), 422, ["surrogate"],
    ),
    "generate: surrogate task": (
        "POST", "/generate", raw({"task": "sen\ud800", "input": "x"}), 422, ["surrogate"],
    ),
    "generate: surrogate field name": (
        "POST", "/generate", raw({"task": "sentiment", "input": "x", "\udc00": 1}), 422,
        ["unicode"],
    ),
    "v1: surrogate user message": ("POST", V1, raw(msgs(("user", LONE))), 400, ["surrogate"]),
    "v1: surrogate user message, streamed": (
        "POST", V1, raw({**msgs(("user", LONE)), "stream": True}), 400, ["surrogate"],
    ),
    "v1: surrogate system message on chat": (
        "POST", V1, raw({**CHAT, "messages": [
            {"role": "system", "content": LONE}, {"role": "user", "content": "Hi"}]}),
        400, ["surrogate"],
    ),
    "v1: surrogate content part": (
        "POST", V1, raw(msgs(("user", [{"type": "text", "text": LONE}]))), 400, ["surrogate"],
    ),
    "v1: surrogate model": ("POST", V1, raw(chat(model="cascade/\udc00")), 400, ["surrogate"]),
    "feedback: surrogate output": (
        "POST", "/feedback", raw({"request_id": "0123456789abcdef", "output": "bad \ud800 fix"}),
        422, ["surrogate"],
    ),
    "feedback: surrogate request id": (
        "POST", "/feedback", raw({"request_id": "0123456789\udc00", "label": "positive"}),
        422, ["surrogate"],
    ),
    "admin: surrogate note": (
        "POST", POLICY, raw({"level": "small", "params": {"threshold": 0.9}, "note": LONE}),
        422, ["surrogate"],
    ),
    # types that must not be coerced
    "generate: cache 0": (
        "POST", "/generate", raw({"task": "sentiment", "input": "x", "cache": 0}), 422,
        ["boolean"],
    ),
    "v1: stream 1": ("POST", V1, raw(chat(stream=1)), 400, ["boolean"]),
    "v1: logprobs 'yes'": ("POST", V1, raw(chat(logprobs="yes")), 400, ["boolean"]),
    # shapes and limits
    "v1: no messages": ("POST", V1, raw(chat(messages=[])), 400, ["messages"]),
    "v1: last message from the assistant": (
        "POST", V1, raw(msgs(("user", "hi"), ("assistant", "hello"))), 400, ["from the user"],
    ),
    "v1: empty last message": ("POST", V1, raw(msgs(("user", None))), 400, ["empty"]),
    "v1: max_tokens 0": ("POST", V1, raw(chat(max_tokens=0)), 400, ["max_tokens"]),
    "v1: max_tokens huge": ("POST", V1, raw(chat(max_tokens=10**12)), 400, ["max_tokens"]),
    "v1: n 2": ("POST", V1, raw(chat(n=2)), 400, ["n=1"]),
    "v1: unknown model": ("POST", V1, raw(chat(model="gpt-4")), 404, ["'gpt-4'"]),
    "v1: bytes that are not UTF-8": ("POST", V1, b'{"model": "\xff\xfe"}', 400, ["JSON"]),
    "v1: nested 100,000 deep": ("POST", V1, b"[" * 100_000 + b"]" * 100_000, 400, ["nested"]),
    "generate: nested 5,000 deep": (
        "POST", "/generate", b'{"task": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 422, ["nested"],
    ),
    "generate: bytes that are not UTF-8": (
        "POST", "/generate", b'{"task": "sentiment", "input": "\xc3\x28"}', 422, ["JSON"],
    ),
    "feedback: unknown request": (
        "POST", "/feedback", raw({"request_id": "0123456789abcdef", "label": "positive"}), 404,
        ["0123456789abcdef"],
    ),
    "admin: policy of an unknown task": (
        "POST", "/admin/tasks/nope/policy", raw({"level": "small", "params": {"threshold": 1}}),
        404, ["'nope'"],
    ),
    "admin: policy of an unknown level": (
        "POST", POLICY, raw({"level": "nope", "params": {"threshold": 1}}), 404, ["nope"],
    ),
    "admin: stats over a week": ("GET", "/admin/stats?window=week", None, 422, ["5m"]),
}
# fmt: on


def message_of(path: str, body: Any) -> str:
    """The error's message, in the shape each API promises (OpenAI's on /v1)."""
    if path.startswith("/v1/"):
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["type"], str)
        return str(body["error"]["message"])
    assert isinstance(body["detail"], str), body
    return str(body["detail"])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx(http: httpx.Client, case: str) -> None:
    method, path, payload, status, words = BAD[case]
    headers = {"content-type": "application/json"}
    r = http.request(method, path, content=payload, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = message_of(path, r.json())
    for w in words:
        assert w in message, message
    # the connection was kept and the gateway still serves on it
    assert http.get("/healthz").status_code == 200


def test_nothing_bad_was_counted_as_served(http: httpx.Client) -> None:
    """Rejected bodies never reach the cascade: no request, no model call, no outage."""
    for case in BAD:
        method, path, payload, _, _ = BAD[case]
        http.request(method, path, content=payload, headers={"content-type": "application/json"})
    stats = http.get("/admin/stats").json()["tasks"]
    for task in ("sentiment", "chat"):
        assert stats[task]["requests"] == 0, stats[task]
        assert stats[task]["unavailable"] == 0


LONG = " ".join(f"word{i}" for i in range(2_500))  # ~12 KB: past 2,048 tokens, under 32 KB


def test_prompt_past_the_context_is_a_400_not_an_outage(http: httpx.Client) -> None:
    before = http.get("/admin/stats").json()["tasks"]["chat"]
    r = http.post("/generate", json={"task": "chat", "input": LONG, "max_tokens": 4})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "context" in detail and "'chat'" in detail and "shorten" in detail, detail
    r = http.post(V1, json={**CHAT, "messages": [{"role": "user", "content": LONG}]})
    assert r.status_code == 400, r.text
    assert "context" in r.json()["error"]["message"]
    r = http.post(
        V1, json={**CHAT, "messages": [{"role": "user", "content": LONG}], "stream": True}
    )
    assert r.status_code == 400, r.text  # refused before the first byte: a plain error
    after = http.get("/admin/stats").json()["tasks"]["chat"]
    assert after["bad_input"] - before["bad_input"] == 3
    assert after["unavailable"] == before["unavailable"]  # not counted as an outage
    assert after["degraded"] == before["degraded"]
    assert after["levels"]["large"]["failed"] == before["levels"]["large"]["failed"]
    # and the large LM is still considered up
    assert http.get("/readyz").status_code == 200
