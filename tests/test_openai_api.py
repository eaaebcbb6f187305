"""The OpenAI-compatible API over real HTTP: the official ``openai`` client against a running
gateway (uvicorn on loopback), SmolLM2 in-process as the small LM and behind llama.cpp's server
as the large LM; the SSE framing checked byte by byte with httpx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cascade.config import PromptConfig
from cascade.llm_server import LocalLLMServer
from tests.api_helpers import Live, live_gateway, live_gateway_fixture
from tests.conftest import ADMIN_TOKEN

CHAT_PROMPT = PromptConfig(system="Answer the question in one sentence.", user="{input}")
LABELS = ("positive", "negative")
TOKENS = 8  # keep generations short: every test pays for them twice (small LM, then large)


def cascade_headers_ok(headers: httpx.Headers, level: str, cached: bool) -> None:
    assert headers["x-cascade-level"] == level
    assert headers["x-cascade-cached"] == ("true" if cached else "false")
    assert float(headers["x-cascade-overhead-ms"]) >= 0.0


def client_for(live: Live, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live.url + "/v1", api_key="unused", timeout=120, max_retries=0, **kw
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ask_chat(question: str, **extra: Any) -> dict[str, Any]:
    """A short ``cascade/chat`` request with per-token logprobs, as the openai client's kwargs."""
    return {
        "model": "cascade/chat",
        "messages": user(question),
        "max_tokens": TOKENS,
        "logprobs": True,
        **extra,
    }


# small_threshold 1.0: the small LM generates, then its policy defers; the large answers
live = live_gateway_fixture("openai-defer")


@pytest.fixture(scope="module")
def client(live: Live) -> openai.OpenAI:
    return client_for(live)


def test_models_lists_every_task(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert sorted(m.id for m in models) == ["cascade/chat", "cascade/sentiment"]
    for m in models:
        assert m.object == "model" and m.owned_by == "cascade" and m.created > 0


def test_chat_with_logprobs_then_cached(client: openai.OpenAI) -> None:
    ask = ask_chat("What is the capital of France?", top_logprobs=2)
    raw = client.chat.completions.with_raw_response.create(**ask)
    cascade_headers_ok(raw.headers, "large", cached=False)
    done = raw.parse()
    assert done.object == "chat.completion" and done.model == "cascade/chat"
    assert done.id.startswith("chatcmpl-")
    (choice,) = done.choices
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert text
    assert choice.finish_reason in ("stop", "length")
    # the large LM (llama.cpp) returns logprobs: they pass through, per token, top 2 each
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == text
    for t in choice.logprobs.content:
        assert t.logprob <= 0.0 and t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the likeliest

    # the gateway's own fields ride along in the extra "cascade" object
    extra = done.model_extra["cascade"]
    assert extra["level"] == "large" and extra["output"] == text
    assert [t["name"] for t in extra["levels"]] == ["small", "large"]
    assert extra["levels"][0]["answered"] is False  # the small LM generated, then deferred

    again = client.chat.completions.with_raw_response.create(**ask)
    cascade_headers_ok(again.headers, "large", cached=True)
    hit = again.parse().choices[0]
    assert hit.message.content == text
    assert hit.logprobs is None  # a cached answer keeps no logprobs


def test_sentiment_streamed_then_plain(client: openai.OpenAI) -> None:
    ask = {"model": "cascade/sentiment", "messages": user("a warm and funny film")}
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    label = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert label in LABELS

    raw = client.chat.completions.with_raw_response.create(**ask)  # now from the cache
    cascade_headers_ok(raw.headers, "large", cached=True)
    done = raw.parse()
    assert done.choices[0].message.content == label
    assert done.choices[0].finish_reason == "stop"
    assert done.model_extra["cascade"]["label"] == label


def sse_events(body: str) -> list[str]:
    """The payloads of an SSE body, checking the framing: ``data: ...`` and a blank line."""
    assert body.endswith("\n\n"), body[-200:]
    events = body[:-2].split("\n\n")
    for ev in events:
        assert ev.startswith("data: ") and "\n" not in ev, ev
    return [ev[len("data: ") :] for ev in events]


def stream_raw(live: Live, payload: dict[str, Any]) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    with httpx.stream(
        "POST", live.url + "/v1/chat/completions", json={**payload, "stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == payload["model"]
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    return r.headers, chunks


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_deferred_level_does_not_leak_into_the_stream(
    live: Live, client: openai.OpenAI, smol_server: LocalLLMServer
) -> None:
    question = "Name a colour of the rainbow."
    headers, chunks = stream_raw(live, ask_chat(question, top_logprobs=2))
    cascade_headers_ok(headers, "large", cached=False)
    assert headers["cache-control"] == "no-cache"
    text = streamed_text(chunks)

    # the large LM's answer, as the gateway served and recorded it: nothing of the small LM's.
    # (Not compared with a second call to llama.cpp's server: with its prompt cache, the same
    # request evaluated in other batch splits can decode differently on an AVX2-only build.)
    account = chunks[-1]["cascade"]
    assert account["level"] == "large" and text == account["output"]
    assert [(t["name"], t["answered"]) for t in account["levels"]] == [
        ("small", False),
        ("large", True),
    ]
    # the small LM did generate, and its policy deferred
    stats = httpx.get(
        live.url + "/admin/stats", headers={"x-admin-token": ADMIN_TOKEN}, timeout=30
    ).json()
    assert stats["tasks"]["chat"]["levels"]["small"]["deferred"] >= 1
    # logprobs of the streamed answer come with the last chunk
    lp = chunks[-1]["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in lp) == text
    assert all(len(t["top_logprobs"]) == 2 for t in lp)

    # the same question again, through the openai client: the cache answers, same text
    with client.chat.completions.with_streaming_response.create(
        model="cascade/chat", messages=user(question), max_tokens=TOKENS, stream=True
    ) as resp:
        cascade_headers_ok(resp.headers, "large", cached=True)
        again = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in again) == text


def test_deferred_stream_through_the_openai_client(
    client: openai.OpenAI, smol_server: LocalLLMServer
) -> None:
    """What a client of the official SDK sees when the small LM's answer is deferred: the
    large LM's tokens only, as they come, and the gateway's account on the last chunk."""
    question = "Name a large animal."
    with client.chat.completions.with_streaming_response.create(
        model="cascade/chat", messages=user(question), max_tokens=TOKENS, stream=True
    ) as resp:
        cascade_headers_ok(resp.headers, "large", cached=False)
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    account = chunks[-1].model_extra["cascade"]
    assert text and text == account["output"]
    assert account["level"] == "large"
    assert [(t["name"], t["answered"]) for t in account["levels"]] == [
        ("small", False),
        ("large", True),
    ]


def test_errors_in_openai_shape(live: Live, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="cascade/summarise", messages=user("hi"))
    assert nf.value.status_code == 404
    assert "cascade/summarise" in nf.value.body["message"]  # type: ignore[index]
    assert "cascade/chat, cascade/sentiment" in nf.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):  # a stream fails before its first byte
        client.chat.completions.create(model="nope", messages=user("hi"), stream=True)

    bad: dict[str, tuple[dict[str, Any], str]] = {
        "no messages": ({"messages": []}, "messages"),
        "assistant last": ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        "empty user message": ({"messages": user("  ")}, "messages"),
        "n of 2": ({"messages": user("hi"), "n": 2}, "n"),
        "temperature 5": ({"messages": user("hi"), "temperature": 5}, "temperature"),
        "top_logprobs 99": ({"messages": user("hi"), "top_logprobs": 99}, "top_logprobs"),
    }
    for case, (fields, param) in bad.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="cascade/chat", **fields)
        err = e.value.body
        assert e.value.status_code == 400, case
        assert err["type"] == "invalid_request_error", case  # type: ignore[index]
        assert err["param"] == param, (case, err)  # type: ignore[index]
        assert err["message"].startswith(f"{param}:"), (case, err)  # type: ignore[index]

    # the raw shape, as any OpenAI client expects it
    r = httpx.post(live.url + "/v1/chat/completions", content=b'{"model": ', timeout=30)
    assert r.status_code == 400
    assert set(r.json()) == {"error"}
    assert set(r.json()["error"]) == {"message", "type", "code", "param"}
    assert "malformed JSON" in r.json()["error"]["message"]
    r = httpx.get(live.url + "/v1/nothing-here", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_native_api_headers(live: Live) -> None:
    # "a warm and funny film" was answered by the large LM above: the native API's cache has it
    r = httpx.post(
        live.url + "/generate",
        json={"task": "sentiment", "input": "a warm and funny film"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    cascade_headers_ok(r.headers, "large", cached=True)
    assert r.json()["label"] in LABELS


def test_accepted_level_streams_its_own_answer(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    """small_threshold 0: the small LM's answer is accepted, and the stream is that answer."""
    with live_gateway(tmp_path, shared_backends, smol_server.base_url, small_threshold=0.0) as gw:
        question = "Name a large animal."
        headers, chunks = stream_raw(gw, ask_chat(question))
        cascade_headers_ok(headers, "small", cached=False)
        text = streamed_text(chunks)
        # the in-process LM has per-token logprobs too (no alternatives: top_logprobs empty)
        lp = chunks[-1]["choices"][0]["logprobs"]["content"]
        assert "".join(t["token"] for t in lp) == text
        assert all(t["logprob"] <= 0.0 and t["top_logprobs"] == [] for t in lp)
        r = httpx.post(
            gw.url + "/generate",
            json={"task": "chat", "input": question, "max_tokens": TOKENS, "cache": False},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        cascade_headers_ok(r.headers, "small", cached=False)
        assert r.json()["level"] == "small"
        assert text == r.json()["output"]
