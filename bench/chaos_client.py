"""The clients of ``bench chaos``: what they ask, how they read the answer, and malformed input.

Each request is one ``Spec`` (route, task, input) sent on /generate or /v1/chat/completions,
plain or streamed. Streams are read as SSE by hand, so that how a stream ended (a final chunk,
an ``error`` event, or neither) is recorded, not smoothed over by a client library.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.chaos_proxy import MARKER

ROUTES = ("generate", "openai", "openai_stream")
TASKS = ("sentiment", "chat")


@dataclass(frozen=True)
class Spec:
    route: str
    task: str
    input: str

    def path_body(self) -> tuple[str, dict[str, Any]]:
        if self.route == "generate":
            return "/generate", {"task": self.task, "input": self.input}
        msgs = [{"role": "user", "content": self.input}]
        body = {"model": f"cascade/{self.task}", "messages": msgs}
        return "/v1/chat/completions", body | {"stream": self.route == "openai_stream"}


# short reviews in the shape SmolLM2 answers with a label word (tests/test_scaleout.py)
_ADJ = ["awful", "beautiful", "boring", "brilliant", "charming", "clumsy", "dull", "funny"]
_ADJ += ["gripping", "lovely", "painful", "poor", "terrible", "warm", "excellent", "good"]
_OTHER = ["dull", "warm", "clever", "weak"]
_WHAT = ["cast", "script", "story", "score"]
_OPENER = ["", "honestly, ", "overall, ", "in short, "]
_REVIEWS = [
    f"{o}a {a} film with a {b} {w}" for o in _OPENER for a in _ADJ for b in _OTHER for w in _WHAT
]
_THING = ["fruit", "country", "animal", "river", "city", "colour", "planet", "tool"]


def new_spec(rng: random.Random, n: int) -> Spec:
    """The ``n``-th new request (n >= 0): no earlier one asked it, so it cannot be a cache hit."""
    route, task = rng.choice(ROUTES), rng.choice(TASKS)
    if task == "sentiment":
        text = _REVIEWS[(n * 7919) % len(_REVIEWS)]  # 7919 is prime: a permutation of them
        text += f" ({n // len(_REVIEWS)})" if n >= len(_REVIEWS) else ""
    else:
        x = rng.randint(2, 999)
        text = rng.choice(
            [
                f"What is {x} plus {n}?",
                f"Which number is larger, {x} or {n}?",
                f"Name a {rng.choice(_THING)} and count to {n % 7 + 2}, attempt {x}-{n}.",
            ]
        )
    return Spec(route, task, text)


def _flags(rec: dict[str, Any], meta: dict[str, Any] | None, headers: httpx.Headers) -> None:
    meta = meta or {}
    rec["cached"] = bool(meta.get("cached", headers.get("x-cascade-cached") == "true"))
    rec["degraded"] = meta.get("degraded")  # None: the response does not say
    rec["level"] = meta.get("level", headers.get("x-cascade-level"))
    if (server := headers.get("x-cascade-overhead-ms")) is not None:
        rec["server_ms"] = float(server)  # the gateway's own time: the rest is queueing or transit
    errors = [f"{t.get('name')}: {t['error']}" for t in meta.get("levels") or [] if t.get("error")]
    if errors:  # why a level failed: what a degraded answer hides
        rec["level_errors"] = errors


async def _stream(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    rec: dict[str, Any],
    headers: dict[str, str],
) -> None:
    parts: list[str] = []
    meta: dict[str, Any] | None = None
    end, done = "none", False
    async with client.stream("POST", path, json=body, headers=headers) as r:
        rec["status"] = r.status_code
        if r.status_code != 200:
            rec["body"] = (await r.aread()).decode("utf-8", "replace")[:400]
            _flags(rec, None, r.headers)
            return
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                end = "bad_json"
                continue
            if "error" in obj:
                end, rec["body"] = "error", json.dumps(obj["error"])[:400]
                continue
            choice = (obj.get("choices") or [{}])[0]
            parts.append((choice.get("delta") or {}).get("content") or "")
            if choice.get("finish_reason"):
                end, meta = "final", obj.get("cascade")
        _flags(rec, meta, r.headers)
    rec.update(output="".join(parts), stream_end=end, stream_done=done)


async def send(
    client: httpx.AsyncClient, spec: Spec, timeout_s: float, headers: dict[str, str]
) -> dict[str, Any]:
    """One request (``headers``: its API key, or none), read to its end within ``timeout_s``;
    its status, latency and flags."""
    path, body = spec.path_body()
    rec: dict[str, Any] = {"route": spec.route, "task": spec.task, "status": None}
    rec.update(output="", cached=False, degraded=None, level=None, stream_end=None)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            if spec.route == "openai_stream":
                await _stream(client, path, body, rec, headers)
            else:
                r = await client.post(path, json=body, headers=headers, timeout=timeout_s + 5)
                rec["status"] = r.status_code
                data = (
                    r.json()
                    if r.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                if r.status_code != 200 or not isinstance(data, dict):
                    rec["body"] = r.text[:400]
                    _flags(rec, None, r.headers)
                elif spec.route == "generate":
                    rec["output"] = str(data.get("output"))
                    _flags(rec, data, r.headers)
                else:
                    choice = (data.get("choices") or [{}])[0]
                    rec["output"] = str((choice.get("message") or {}).get("content") or "")
                    rec["finish_reason"] = choice.get("finish_reason")
                    _flags(rec, data.get("cascade"), r.headers)
    except TimeoutError:
        rec["status"] = "timeout"
    except httpx.HTTPError as e:
        rec["status"] = f"error:{type(e).__name__}"
    rec["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    rec["marker"] = MARKER in rec["output"]
    return rec


_CHAT = '{"model": "cascade/chat", "messages": [{"role": "user", "content": %s}]%s}'
_NEST = 50_000
# (what, route, raw body): none of these may be a 5xx
BAD_INPUTS: list[tuple[str, str, bytes]] = [
    (w, r, b if isinstance(b, bytes) else b.encode())
    for w, r, b in [
        ("lone low surrogate", "/generate", '{"task": "sentiment", "input": "\\udc00"}'),
        ("lone high surrogate", "/generate", '{"task": "chat", "input": "why \\ud800 is it?"}'),
        ("surrogate in a message", "/v1/chat/completions", _CHAT % ('"hi \\udc00"', "")),
        ("surrogate, streamed", "/v1/chat/completions", _CHAT % ('"\\udc00"', ', "stream": true')),
        ("surrogate task name", "/generate", '{"task": "\\udc00", "input": "a film"}'),
        (
            "surrogate model name",
            "/v1/chat/completions",
            _CHAT.replace("chat", "\\udc00") % ('"hi"', ""),
        ),
        ("task is a number", "/generate", '{"task": 123, "input": "a fine film"}'),
        ("input is a list", "/generate", '{"task": "sentiment", "input": ["a", "b"]}'),
        (
            "huge max_tokens",
            "/generate",
            '{"task": "chat", "input": "hi", "max_tokens": 1' + "0" * 400 + "}",
        ),
        ("max_tokens 1e309", "/generate", '{"task": "chat", "input": "hi", "max_tokens": 1e309}'),
        ("temperature NaN", "/generate", '{"task": "chat", "input": "hi", "temperature": NaN}'),
        ("temperature 1e999", "/v1/chat/completions", _CHAT % ('"hi"', ', "temperature": 1e999')),
        ("max_tokens -1", "/v1/chat/completions", _CHAT % ('"hi"', ', "max_tokens": -1')),
        ("n is 2", "/v1/chat/completions", _CHAT % ('"hi"', ', "n": 2')),
        ("stream is a string", "/v1/chat/completions", _CHAT % ('"hi"', ', "stream": "yes"')),
        ("empty messages", "/v1/chat/completions", '{"model": "cascade/chat", "messages": []}'),
        ("empty user message", "/v1/chat/completions", _CHAT % ('""', "")),
        ("content is an object", "/v1/chat/completions", _CHAT % ('{"a": 1}', "")),
        (
            "cache is 0",
            "/generate",
            '{"task": "sentiment", "input": "a fine cat film", "cache": 0}',
        ),
        ("unknown task", "/generate", '{"task": "nope", "input": "a film"}'),
        ("unknown model", "/v1/chat/completions", _CHAT.replace("chat", "nope") % ('"hi"', "")),
        ("truncated JSON", "/generate", '{"task": "sentiment", "input": '),
        ("JSON array body", "/generate", "[1, 2, 3]"),
        ("empty body", "/generate", ""),
        ("invalid UTF-8", "/generate", b'{"task": "sentiment", "input": "\xff\xfe film"}'),
        (
            "deeply nested input",
            "/generate",
            '{"task": "sentiment", "input": ' + "[" * _NEST + "]" * _NEST + "}",
        ),
        (
            "input over the limit",
            "/generate",
            '{"task": "sentiment", "input": "' + "x" * 100_000 + '"}',
        ),
    ]
]


async def send_raw(
    client: httpx.AsyncClient,
    what: str,
    path: str,
    raw: bytes,
    timeout_s: float,
    headers: dict[str, str],
) -> dict[str, Any]:
    """One malformed request, bytes as given, with a valid key (so that it reaches the
    validation it is meant to test)."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"what": what, "route": path}
    headers = headers | {"content-type": "application/json"}
    try:
        async with asyncio.timeout(timeout_s):
            r = await client.post(path, content=raw, headers=headers)
        rec.update(status=r.status_code, body=r.text[:300])
    except TimeoutError:
        rec["status"] = "timeout"
    except httpx.HTTPError as e:
        rec["status"] = f"error:{type(e).__name__}"
    rec["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return rec
