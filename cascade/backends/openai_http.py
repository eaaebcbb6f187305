"""Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI) through httpx.

One retry loop lives here, in the gateway: bounded retries with exponential backoff on
connection errors, timeouts, 429 and 5xx, honouring ``Retry-After``, and never past the
caller's deadline. ``logprobs`` are asked for; an endpoint that does not return them is
noticed once and reported, and its answers carry ``has_logprobs=False`` instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import httpx
import numpy as np

from cascade.backends.base import (
    BackendError,
    ContextLengthError,
    LMResult,
    SilentStreamError,
    entropy_of_logprobs,
)
from cascade.backends.openai_wire import (
    check_complete,
    parse_chat_response,
    raise_for,
    stream_choice,
    top_map,
)
from cascade.prompts import LabelMatcher, Message

log = logging.getLogger(__name__)

CLASSIFY_TOP_LOGPROBS = 20
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ResponseCache(Protocol):
    """Replay store for raw responses, keyed by (model, payload); used by benchmarks."""

    def get(self, model: str, key: str) -> dict[str, Any] | None: ...

    def put(
        self, model: str, key: str, payload: dict[str, Any], response: dict[str, Any]
    ) -> None: ...


def payload_key(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request payload without its model and stream flags."""
    body = {k: v for k, v in payload.items() if k not in ("model", "stream", "stream_options")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class UpstreamHealth:
    """What the calls themselves say about an endpoint: readiness reads this instead of
    pinging a server that is merely busy (a ping queued behind generations times out)."""

    def __init__(self) -> None:
        self.inflight = 0
        self.last_ok = 0.0
        self.last_failure = 0.0
        self.failures = 0  # in a row

    def ok(self) -> None:
        self.last_ok, self.failures = time.monotonic(), 0

    def failed(self) -> None:
        self.last_failure, self.failures = time.monotonic(), self.failures + 1

    def failing(self, after: int = 3) -> bool:
        """Several calls in a row failed and none answered since."""
        return self.failures >= after and self.last_failure > self.last_ok

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around one call: in flight meanwhile; its outcome recorded after. An endpoint that
        answered no to the prompt (past its context) is up."""
        self.inflight += 1
        try:
            yield
        except ContextLengthError:
            self.ok()
            raise
        except BackendError:
            self.failed()
            raise
        else:
            self.ok()
        finally:
            self.inflight -= 1

    def recent(self, within_s: float) -> bool:
        """The endpoint answered or is being called now: no probe needed to know it is up."""
        return self.inflight > 0 or time.monotonic() - self.last_ok < within_s


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class OpenAIBackend:
    """Async client for one model on one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.25,
        logprobs: bool = True,
        top_logprobs: int = 20,
        cache: ResponseCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.want_logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.cache = cache
        self.logprobs_supported: bool | None = None  # learned from the first answer
        self.health = UpstreamHealth()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ transport

    async def _post(self, payload: dict[str, Any], deadline: float | None) -> dict[str, Any]:
        key = payload_key(payload)
        if self.cache is not None:
            hit = self.cache.get(self.model, key)
            if hit is not None:
                return hit
        with self.health.call():
            data = await self._post_retrying(payload, deadline)
        if self.cache is not None:
            self.cache.put(self.model, key, payload, data)
        return data

    async def _post_retrying(
        self, payload: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BackendError(f"{self.model}: deadline passed before an answer")
            timeout = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
            wait: float | None = None
            try:
                resp = await self._client.post(
                    "/chat/completions", json=payload, timeout=httpx.Timeout(timeout)
                )
            except (httpx.TimeoutException, httpx.TransportError) as e:
                err: str = f"{type(e).__name__}: {e}".rstrip(": ")
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError as e:
                        raise BackendError(f"{self.model}: answer is not JSON: {e}") from e
                    if not isinstance(data, dict):
                        raise BackendError(f"{self.model}: answer is not a JSON object")
                    return data  # type: ignore[no-any-return]
                raise_for(self.model, resp.status_code, resp.text)
                err = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in _RETRY_STATUS:
                    raise BackendError(f"{self.model} at {self.base_url}: {err}")
                wait = _retry_after(resp)
            if attempt >= self.max_retries:
                raise BackendError(
                    f"{self.model} at {self.base_url}: {err} (after {attempt + 1} attempts)"
                )
            if wait is None:
                wait = self.backoff_s * (2**attempt)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise BackendError(f"{self.model} at {self.base_url}: {err}; no time to retry")
            attempt += 1
            await asyncio.sleep(wait)

    def _base_payload(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        top_logprobs: int,
        logprobs: bool = True,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if self.want_logprobs and logprobs:
            payload["logprobs"] = True
            # llama.cpp's server returns no logprobs at all unless top_logprobs >= 1
            payload["top_logprobs"] = max(1, top_logprobs)
        return payload

    def _note_logprobs(self, has_logprobs: bool) -> None:
        if self.want_logprobs and self.logprobs_supported is None:
            self.logprobs_supported = has_logprobs
            if not has_logprobs:
                log.warning(
                    "%s at %s returns no logprobs: deferral rules fall back to what is available",
                    self.model,
                    self.base_url,
                )

    # ------------------------------------------------------------------ calls

    async def classify(
        self, messages: list[Message], matcher: LabelMatcher, deadline: float | None = None
    ) -> LMResult:
        # label probabilities need the widest view of the first token the API allows
        payload = self._base_payload(messages, 1, 0.0, CLASSIFY_TOP_LOGPROBS)
        return await self._complete(payload, deadline, matcher)

    async def generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        deadline: float | None = None,
        logprobs: bool = True,
    ) -> LMResult:
        """``logprobs=False`` skips them for a caller that needs none (a final answer)."""
        payload = self._base_payload(messages, max_tokens, temperature, self.top_logprobs, logprobs)
        return await self._complete(payload, deadline, None)

    async def _complete(
        self, payload: dict[str, Any], deadline: float | None, matcher: LabelMatcher | None
    ) -> LMResult:
        """One plain completion, read as labels (``matcher``) or as generated text, which
        must be complete (a finish reason, some text) to count as an answer."""
        t0 = time.perf_counter()
        data = await self._post(payload, deadline)
        result = parse_chat_response(data, self.model, matcher)
        if matcher is None:
            check_complete(self.model, result.text, result.finish_reason)
        if "logprobs" in payload:
            self._note_logprobs(result.has_logprobs)
        result.latency_ms = (time.perf_counter() - t0) * 1000
        return result

    async def stream(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        deadline: float | None = None,
        logprobs: bool = True,
    ) -> AsyncIterator[tuple[str, LMResult | None]]:
        """Yield text deltas as the endpoint streams them, then ("", final result).

        A stream that ends without a finish reason (cut off), says nothing, or sends a line
        that is not JSON is a failure (BackendError), never an answer: what it did send must
        not be served as complete, cached or learned from."""
        payload = self._base_payload(messages, max_tokens, temperature, self.top_logprobs, logprobs)
        payload["stream"] = True
        t0 = time.perf_counter()
        remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
        timeout = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
        parts: list[str] = []
        toks: list[str] = []
        lps: list[float] = []
        tops: list[dict[str, float]] = []
        finish = None
        said = False  # any data line at all
        with self.health.call(), _as_backend_error(self.model, self.base_url):
            async with self._client.stream(
                "POST", "/chat/completions", json=payload, timeout=httpx.Timeout(timeout)
            ) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")
                    raise_for(self.model, resp.status_code, body)
                    raise BackendError(f"{self.model}: HTTP {resp.status_code}: {body[:200]}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    chunk = line[5:].strip()
                    said = True
                    if chunk == "[DONE]":
                        break
                    choice = stream_choice(self.model, chunk)
                    delta = (choice.get("delta") or {}).get("content") or ""
                    for item in ((choice.get("logprobs") or {}).get("content")) or []:
                        lps.append(float(item["logprob"]))
                        toks.append(str(item.get("token", "")))
                        tops.append(top_map(item))
                    finish = choice.get("finish_reason") or finish
                    if delta:
                        parts.append(delta)
                        yield delta, None
            if not said:
                raise SilentStreamError(f"{self.model}: the stream closed without an answer")
            text = "".join(parts)
            check_complete(self.model, text, finish)
        yield (
            "",
            LMResult(
                text=text,
                model=self.model,
                token_logprobs=lps,
                tokens=toks or None,
                entropies=[entropy_of_logprobs(np.fromiter(t.values(), float)) for t in tops if t]
                or None,
                top_logprobs=tops or None,
                finish_reason=finish,
                latency_ms=(time.perf_counter() - t0) * 1000,
                has_logprobs=bool(lps),
            ),
        )

    async def ping(self, timeout_s: float = 1.0) -> bool:
        try:
            resp = await self._client.get("/models", timeout=httpx.Timeout(timeout_s))
        except (httpx.TimeoutException, httpx.TransportError):
            return False
        return resp.status_code < 500


@contextlib.contextmanager
def _as_backend_error(model: str, base_url: str) -> Iterator[None]:
    """A streamed answer's transport failures and malformed chunks, as BackendError."""
    try:
        yield
    except BackendError:
        raise
    except (httpx.TimeoutException, httpx.TransportError) as e:
        raise BackendError(f"{model} at {base_url}: {type(e).__name__}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise BackendError(f"{model}: malformed stream chunk: {e!r}") from e
