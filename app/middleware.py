"""Pure-ASGI middleware (no BaseHTTPMiddleware: it costs latency on every request)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_JSON = b"application/json"
_LENIENT = (b"", b"application/x-www-form-urlencoded", b"text/plain")


class StartTime:
    """Stamp each request's arrival, so handlers can report the gateway's own time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["cascade_t0"] = time.perf_counter()
        await self.app(scope, receive, send)


class JSONBodyDefault:
    """Read POST bodies as JSON when the client did not say otherwise.

    ``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``; every example in our
    README does that, and no route of ours takes a form, so such a body is treated as JSON
    (malformed JSON still gets a 422 that says so).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = list(scope["headers"])
            ctype = b""
            idx = -1
            for i, (k, v) in enumerate(headers):
                if k == b"content-type":
                    ctype, idx = v.split(b";", 1)[0].strip().lower(), i
                    break
            if ctype in _LENIENT:
                if idx >= 0:
                    headers[idx] = (b"content-type", _JSON)
                else:
                    headers.append((b"content-type", _JSON))
                scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body far larger than any valid request, before the app parses it.

    With a Content-Length the check is free; a chunked body is read here (up to the limit)
    and handed on whole, so an oversized one never reaches the JSON parser.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, input_limit: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.input_limit = input_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = int(v) if v.isdigit() else None
        if length is not None:
            if length > self.max_bytes:
                await _reject(send, self.max_bytes, self.input_limit)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                await self.app(scope, _replay([msg]), send)  # disconnect: let the app see it
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _reject(send, self.max_bytes, self.input_limit)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _reject(send: Send, limit: int, input_limit: int) -> None:
    body = (
        f'{{"detail":"request body over {limit} bytes; inputs are limited to {input_limit} bytes"}}'
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
