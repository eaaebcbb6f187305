"""Real loopback servers for fault injection: a scripted HTTP server (429s, 5xx, slow or odd
answers, then a proper chat completion) and a TCP server that accepts and never answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


def completion(
    text: str,
    tokens: list[tuple[str, float, dict[str, float]]] | None = None,
    finish: str = "stop",
) -> dict[str, Any]:
    """An OpenAI chat completion body; ``tokens``: (token, logprob, top_logprobs) per token."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    if tokens is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": tok,
                    "logprob": lp,
                    "top_logprobs": [{"token": t, "logprob": v} for t, v in tops.items()],
                }
                for tok, lp, tops in tokens
            ]
        }
    return {"id": "cmpl-1", "object": "chat.completion", "model": "m", "choices": [choice]}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: completion("ok"))
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def sse(*events: Any, done: bool = True) -> Reply:
    """A streamed answer: each event a ``data:`` line (JSON unless already bytes)."""
    lines = [e if isinstance(e, bytes) else json.dumps(e).encode() for e in events]
    body = b"".join(b"data: " + x + b"\n\n" for x in lines) + (b"data: [DONE]\n\n" if done else b"")
    return Reply(body=body, content_type="text/event-stream")


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    """One chunk of a streamed chat completion."""
    choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    body: Any


class _Loopback:
    """A server on a loopback port, run by ``_thread`` while in its ``with`` block."""

    port: int
    _thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class ScriptedServer(_Loopback):
    """A threaded HTTP server answering POSTs with ``replies`` in order (the last one repeats)."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _answer(self, reply: Reply) -> None:
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = raw if isinstance(raw, bytes) else raw.encode()
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                with outer._lock:
                    outer.seen.append(
                        Seen(time.monotonic(), self.path, dict(self.headers), json.loads(raw))
                    )
                    i = min(len(outer.seen) - 1, len(outer.replies) - 1)
                    reply = outer.replies[i]
                self._answer(reply)

            def do_GET(self) -> None:
                self._answer(Reply(200, {"object": "list", "data": [{"id": "m"}]}))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentServer(_Loopback):
    """Accepts TCP connections and never answers: a hung upstream."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()
