"""OpenAIBackend's retry loop against real loopback servers, and replayed answers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from cascade.backends.base import BackendError
from cascade.backends.openai_http import OpenAIBackend
from cascade.llm_server import free_port
from cascade.prompts import LabelMatcher
from cascade.replay import ReplayFile
from tests.servers import Reply, ScriptedServer, SilentServer, completion

MSGS = [{"role": "user", "content": "Say hello."}]


def error(status: int, message: str = "upstream says no") -> Reply:
    return Reply(status, {"error": {"message": message}})


async def generate(backend: OpenAIBackend, deadline: float | None = None, msgs=MSGS):
    try:
        return await backend.generate(msgs, max_tokens=8, deadline=deadline)
    finally:
        await backend.aclose()


async def test_success_and_request_shape() -> None:
    tokens = [("Hello", -0.1, {"Hello": -0.1, "Hi": -2.5}), ("!", -0.7, {"!": -0.7, ".": -0.9})]
    with ScriptedServer([Reply(200, completion("Hello!", tokens))]) as srv:
        backend = OpenAIBackend(srv.base_url, "big", api_key="sk-test", top_logprobs=5)
        r = await generate(backend)
    assert r.text == "Hello!"
    assert r.token_logprobs == [-0.1, -0.7]
    assert r.has_logprobs
    assert r.entropies is not None and len(r.entropies) == 2 and all(e > 0 for e in r.entropies)
    assert backend.logprobs_supported is True
    (req,) = srv.seen
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.body["model"] == "big"
    assert req.body["messages"] == MSGS
    assert req.body["max_tokens"] == 8
    assert req.body["logprobs"] is True and req.body["top_logprobs"] == 5


async def test_classify_reads_label_probs_from_top_logprobs() -> None:
    tops = {"Positive": -0.2, " neg": -1.9, "The": -2.2, "pos": -3.0}
    with ScriptedServer([Reply(200, completion("Positive", [("Positive", -0.2, tops)]))]) as srv:
        backend = OpenAIBackend(srv.base_url, "big")
        try:
            r = await backend.classify(MSGS, LabelMatcher(["positive", "negative"]))
        finally:
            await backend.aclose()
    assert srv.seen[0].body["max_tokens"] == 1
    assert srv.seen[0].body["top_logprobs"] == 20
    pos, neg = math.exp(-0.2) + math.exp(-3.0), math.exp(-1.9)
    assert r.label_probs == pytest.approx(
        {"positive": pos / (pos + neg), "negative": neg / (pos + neg)}
    )
    assert r.label_mass == pytest.approx(pos + neg)
    assert r.label() == "positive"


async def test_answer_without_logprobs_is_noticed() -> None:
    with ScriptedServer([Reply(200, completion("Hello"))]) as srv:
        backend = OpenAIBackend(srv.base_url, "big")
        r = await generate(backend)
    assert r.text == "Hello"
    assert r.has_logprobs is False
    assert r.token_logprobs == []
    assert backend.logprobs_supported is False


async def test_honours_retry_after_on_429() -> None:
    replies = [
        Reply(429, {"error": "slow down"}, {"Retry-After": "1"}),
        Reply(200, completion("hi")),
    ]
    with ScriptedServer(replies) as srv:
        # a 30 s backoff would be used if Retry-After were ignored
        backend = OpenAIBackend(srv.base_url, "big", max_retries=2, backoff_s=30.0)
        t0 = time.monotonic()
        r = await generate(backend)
        elapsed = time.monotonic() - t0
    assert r.text == "hi"
    assert len(srv.seen) == 2
    assert srv.seen[1].at - srv.seen[0].at >= 0.95  # waited as told
    assert elapsed < 20


async def test_retries_5xx_with_backoff_then_succeeds() -> None:
    with ScriptedServer([error(503), error(502), Reply(200, completion("fine"))]) as srv:
        backend = OpenAIBackend(srv.base_url, "big", max_retries=2, backoff_s=0.2)
        r = await generate(backend)
    assert r.text == "fine"
    assert len(srv.seen) == 3
    assert srv.seen[1].at - srv.seen[0].at >= 0.19  # backoff_s * 2**0
    assert srv.seen[2].at - srv.seen[1].at >= 0.39  # backoff_s * 2**1


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_gives_up_after_max_retries(status: int) -> None:
    with ScriptedServer([error(status, "overloaded right now")]) as srv:
        backend = OpenAIBackend(srv.base_url, "big", max_retries=2, backoff_s=0.01)
        with pytest.raises(BackendError) as info:
            await generate(backend)
    msg = str(info.value)
    assert f"HTTP {status}" in msg
    assert "after 3 attempts" in msg
    assert "overloaded right now" in msg
    assert len(srv.seen) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_not_retried(status: int) -> None:
    with ScriptedServer([error(status, "max_tokens too large")]) as srv:
        backend = OpenAIBackend(srv.base_url, "big", max_retries=3, backoff_s=0.01)
        with pytest.raises(BackendError) as info:
            await generate(backend)
    assert f"HTTP {status}" in str(info.value)
    assert "max_tokens too large" in str(info.value)
    assert len(srv.seen) == 1


async def test_non_json_answer_is_an_error() -> None:
    with (
        ScriptedServer([Reply(200, b"<html>gateway</html>")]) as srv,
        pytest.raises(BackendError, match="not JSON"),
    ):
        await generate(OpenAIBackend(srv.base_url, "big", max_retries=2))
    assert len(srv.seen) == 1


async def test_malformed_completion_is_an_error() -> None:
    with (
        ScriptedServer([Reply(200, {"choices": []})]) as srv,
        pytest.raises(BackendError, match="malformed"),
    ):
        await generate(OpenAIBackend(srv.base_url, "big"))


async def test_connection_refused() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "big", max_retries=1, backoff_s=0)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as info:
        await generate(backend)
    assert "ConnectError" in str(info.value)
    assert "after 2 attempts" in str(info.value)
    assert time.monotonic() - t0 < 10


async def test_silent_server_hits_the_call_timeout() -> None:
    with SilentServer() as srv:
        backend = OpenAIBackend(srv.base_url, "big", timeout_s=0.5, max_retries=1, backoff_s=0)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as info:
            await generate(backend)
        elapsed = time.monotonic() - t0
        assert len(srv.conns) >= 1  # it did connect; the answer never came
    assert "Timeout" in str(info.value)
    assert "after 2 attempts" in str(info.value)
    assert 0.9 <= elapsed < 10


async def test_deadline_shorter_than_timeout_is_respected() -> None:
    with SilentServer() as srv:
        backend = OpenAIBackend(srv.base_url, "big", timeout_s=60, max_retries=5, backoff_s=0.01)
        t0 = time.monotonic()
        with pytest.raises(BackendError):
            await generate(backend, deadline=t0 + 1.0)
        elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 6  # the deadline, not the 60 s timeout nor six attempts


async def test_no_retry_past_the_deadline() -> None:
    replies = [Reply(429, {"error": "later"}, {"Retry-After": "30"}), Reply(200, completion("x"))]
    with ScriptedServer(replies) as srv:
        backend = OpenAIBackend(srv.base_url, "big", max_retries=3)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no time to retry"):
            await generate(backend, deadline=t0 + 2.0)
        assert time.monotonic() - t0 < 2.0  # gave up at once instead of sleeping 30 s
    assert len(srv.seen) == 1


async def test_deadline_already_passed_sends_nothing() -> None:
    with (
        ScriptedServer([Reply(200, completion("x"))]) as srv,
        pytest.raises(BackendError, match="deadline"),
    ):
        await generate(OpenAIBackend(srv.base_url, "big"), deadline=time.monotonic() - 1)
    assert srv.seen == []


async def test_ping() -> None:
    with ScriptedServer([]) as srv:
        backend = OpenAIBackend(srv.base_url, "big")
        assert await backend.ping() is True
        await backend.aclose()
    closed = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "big")
    assert await closed.ping() is False
    await closed.aclose()
    with SilentServer() as silent:
        hung = OpenAIBackend(silent.base_url, "big")
        t0 = time.monotonic()
        assert await hung.ping(timeout_s=0.5) is False
        assert time.monotonic() - t0 < 5
        await hung.aclose()


# ------------------------------------------------------------------ replayed answers


async def test_replay_file_records_then_replays_without_http(tmp_path: Path) -> None:
    tokens = [("Hi", -0.3, {"Hi": -0.3, "Hello": -1.5})]
    with ScriptedServer([Reply(200, completion("Hi", tokens))]) as srv:
        recorder = OpenAIBackend(srv.base_url, "big", cache=ReplayFile(tmp_path))
        first = await recorder.generate(MSGS, max_tokens=8)
        again = await recorder.generate(MSGS, max_tokens=8)  # answered from the cache
        await recorder.aclose()
    assert len(srv.seen) == 1
    assert first.text == again.text == "Hi"

    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["model"] == "big"
    assert rec["request"]["messages"] == MSGS and "model" not in rec["request"]
    assert rec["response"]["choices"][0]["message"]["content"] == "Hi"

    # a new process: the file is read back; nothing listens at the endpoint any more
    replay = ReplayFile(tmp_path)
    assert len(replay) == 1
    closed = f"http://127.0.0.1:{free_port()}/v1"
    offline = OpenAIBackend(closed, "big", cache=replay, max_retries=0)
    try:
        r = await offline.generate(MSGS, max_tokens=8)
        assert r.text == "Hi"
        assert r.token_logprobs == [-0.3]
        assert r.top_logprobs == [{"Hi": -0.3, "Hello": -1.5}]
        assert replay.hits == 1
        # anything not recorded really goes to the (closed) endpoint
        with pytest.raises(BackendError, match="ConnectError"):
            await offline.generate(MSGS, max_tokens=9)
        assert replay.misses == 1
    finally:
        await offline.aclose()
    other_model = OpenAIBackend(closed, "other", cache=replay, max_retries=0)
    with pytest.raises(BackendError):
        await generate(other_model)  # the model is part of the key


def test_replay_file_skips_a_torn_last_line(tmp_path: Path) -> None:
    good = {"model": "big", "key": "k1", "request": {}, "response": completion("a")}
    (tmp_path / "answers.jsonl").write_text(json.dumps(good) + "\n" + '{"model": "big", "ke')
    replay = ReplayFile(tmp_path)
    assert len(replay) == 1
    assert replay.get("big", "k1") == completion("a")
    assert replay.get("big", "k2") is None


@pytest.mark.parametrize(
    ("final", "client_asks", "asked"),
    [(True, False, False), (True, True, True), (False, False, True)],
)
async def test_large_level_asks_for_logprobs_only_when_someone_reads_them(
    final: bool, client_asks: bool, asked: bool
) -> None:
    """A final answer's log-probs feed no policy, and llama.cpp's server generates several
    times slower with them: asked for only by a client or for a level that can defer."""
    from cascade.config import LevelConfig, PromptConfig, TaskConfig
    from cascade.levels import Query
    from cascade.levels.lm import OpenAILevel

    remote = LevelConfig(name="remote", kind="openai", backend="large", cost=0.5)
    last = LevelConfig(name="large", kind="openai", backend="large", cost=1.0)
    task = TaskConfig(kind="generate", prompt=PromptConfig(user="{input}"), levels=[remote, last])
    tokens = [("Hi", -0.2, {"Hi": -0.2, "Hello": -1.9})]
    body = completion("Hi", tokens) if asked else completion("Hi")
    choice = body["choices"][0]
    chunk = {"choices": [{"delta": {"content": "Hi"}, "logprobs": choice.get("logprobs")}]}
    end = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()
    for streaming in (False, True):
        with ScriptedServer([Reply(200, sse if streaming else body)]) as srv:
            backend = OpenAIBackend(srv.base_url, "big")
            level = OpenAILevel(last if final else remote, task, backend)
            q = Query("t", "hello", MSGS, 4, want_logprobs=client_asks)
            try:
                if streaming:
                    outs = [o async for _, o in level.stream(q) if o is not None]
                    out = outs[-1]
                else:
                    out = await level.predict(q)
            finally:
                await backend.aclose()
        assert out.text == "Hi"
        assert (out.lm is not None and out.lm.has_logprobs) is asked
        (req,) = srv.seen
        assert ("logprobs" in req.body) is asked, req.body
        assert req.body.get("stream", False) is streaming
