"""A large LM that lies: streams cut off mid-answer, streams that say nothing, lines that are
not JSON, answers without a finish reason or without text. None of it is served as a complete
answer, cached or learned from; a cheaper answer stands in (``degraded``, on streams too) or
the stream ends with an error event the ``openai`` client raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.api_helpers import gateway, task_stats, wait_for_stats
from tests.servers import Reply, ScriptedServer, completion, delta, sse

ASK = {"task": "chat", "input": "Name a colour.", "max_tokens": 3}


def chat_body(text: str, stream: bool) -> dict[str, Any]:
    return {
        "model": "cascade/chat",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 3,
        "stream": stream,
    }


async def read_sse(client: httpx.AsyncClient, text: str) -> list[dict[str, Any]]:
    """The events of one streamed chat completion, [DONE] excluded."""
    events = []
    async with client.stream("POST", "/v1/chat/completions", json=chat_body(text, True)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)


CUT = sse(delta("Blue "), delta("and \u27c2"), done=False)  # no finish reason, no [DONE]
GOOD = sse(delta("Green."), delta("", finish="stop"))


async def test_stream_cut_mid_answer_is_an_error_never_cached_or_learned(
    tmp_path: Path, shared_backends: dict
) -> None:
    with ScriptedServer([CUT, GOOD]) as llm:
        async with gateway(tmp_path, shared_backends, llm.base_url) as client:
            events = await read_sse(client, "Name a colour.")
            assert text_of(events) == "Blue and \u27c2"  # what was sent cannot be taken back
            assert "error" in events[-1], events[-1]  # but the stream says it is broken
            assert "mid-answer" in events[-1]["error"]["message"]
            assert not any(
                e["choices"][0]["finish_reason"] for e in events if "choices" in e
            )  # never a "stop" on a cut answer
            s = await wait_for_stats(client, "chat", lambda s: s["requests"] == 1)
            assert s["demonstrations"] == 0 and s["unavailable"] == 1
            assert s["levels"]["large"]["failed"] == 1
            # not cached: the repeat reaches the large LM, which now answers properly
            again = await read_sse(client, "Name a colour.")
            assert text_of(again) == "Green."
            assert again[-1]["cascade"]["cached"] is False
            assert again[-1]["cascade"]["degraded"] is False
            third = await read_sse(client, "Name a colour.")
            assert text_of(third) == "Green." and third[-1]["cascade"]["cached"] is True
            s = await wait_for_stats(client, "chat", lambda s: s["requests"] == 3)
            assert s["demonstrations"] == 1  # the good answer only


# each: what the large LM sends back, in order (the last repeats)
LIES = {
    "empty stream, then no finish reason": [
        sse(done=False),
        Reply(body=completion("Red", finish=None)),
    ],
    "empty stream, then an empty answer": [sse(done=False), Reply(body=completion(""))],
    "a line that is not JSON": [sse(b"{not json", done=False)],
    "an error event": [sse({"error": {"message": "boom"}}, done=False)],
    "[DONE] and nothing else": [sse(), Reply(body=completion("Red", finish=None))],
}


@pytest.mark.parametrize("case", list(LIES))
async def test_lying_stream_before_any_text_degrades(
    tmp_path: Path, shared_backends: dict, case: str
) -> None:
    with ScriptedServer(LIES[case]) as llm:
        async with gateway(tmp_path, shared_backends, llm.base_url) as client:
            events = await read_sse(client, "Name a colour.")
            final = events[-1]
            assert final["choices"][0]["finish_reason"] in ("stop", "length"), final
            assert final["cascade"]["degraded"] is True  # flagged on the stream itself
            assert final["cascade"]["level"] == "small"
            assert text_of(events) == final["cascade"]["output"] != ""
            again = await read_sse(client, "Name a colour.")
            assert again[-1]["cascade"]["cached"] is False  # a degraded answer is not cached
            s = await wait_for_stats(client, "chat", lambda s: s["requests"] == 2)
            assert s["demonstrations"] == 0 and s["degraded"] == 2
            assert s["unavailable"] == 0


PLAIN_LIES = {
    "no finish reason": completion("Red", finish=None),
    "empty answer": completion(""),
    "no choices": {"id": "x", "choices": []},
    "not an object": [1, 2, 3],
}


@pytest.mark.parametrize("case", list(PLAIN_LIES))
async def test_lying_answer_degrades(tmp_path: Path, shared_backends: dict, case: str) -> None:
    with ScriptedServer([Reply(body=PLAIN_LIES[case])]) as llm:
        async with gateway(tmp_path, shared_backends, llm.base_url) as client:
            r = await client.post("/generate", json=ASK)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degraded"] is True and body["level"] == "small"
            assert body["levels"][-1]["error"]
            again = await client.post("/generate", json=ASK)
            assert again.json()["cached"] is False
            s = await task_stats(client, "chat")
            assert s["demonstrations"] == 0


async def test_openai_client_raises_on_a_cut_stream(tmp_path: Path, shared_backends: dict) -> None:
    with ScriptedServer([CUT]) as llm:
        async with gateway(tmp_path, shared_backends, llm.base_url) as client:
            app = client.app  # type: ignore[attr-defined]
            transport = httpx.ASGITransport(app=app)
            oc = openai.AsyncOpenAI(
                base_url="http://gateway/v1",
                api_key="unused",
                max_retries=0,
                http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway/v1"),
            )
            got = []
            with pytest.raises(openai.APIError, match="mid-answer"):
                stream = await oc.chat.completions.create(
                    model="cascade/chat",
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=3,
                    stream=True,
                )
                async for chunk in stream:
                    got.append(chunk.choices[0].delta.content or "")
            assert "".join(got) == "Blue and \u27c2"
