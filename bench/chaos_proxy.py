"""The fault-injecting upstream of ``bench chaos``: a loopback proxy in front of the real large LM.

It forwards ``POST /v1/chat/completions`` (plain and ``stream: true``) and ``GET /v1/models``
to a llama.cpp server, or breaks them the way large-LM endpoints break, by ``mode``:

- ``pass``: forward untouched;
- ``hang``: accept and never answer (until the client gives up or the mode changes);
- ``http500``, ``http429`` (with ``Retry-After: 1``): an error status;
- ``junk``: 200 with a body that is not JSON (streams: a ``data: {not json`` line);
- ``cut``: the real answer's start with ``MARKER`` appended, then the end, with no
  ``finish_reason`` nor ``[DONE]`` (plain: a 200 completion with that partial content);
- ``empty``: streams: 200 and no data line at all; plain: a completion with no choices.

It counts the complete, valid answers it handed over, per task (told apart by the system
prompt): each of those should become exactly one demonstration in the gateway's store.

It runs as its own process (``python -m bench.chaos_proxy``), so that the threads relaying
streams do not share a GIL with the load clients whose latencies the bench measures; the bench
steers it over loopback: ``POST /_chaos/mode`` ``{"mode": ...}`` and ``GET /_chaos/stats``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from cascade.prompts import LabelMatcher

MODES = ("pass", "hang", "http500", "http429", "junk", "cut", "empty")
MARKER = "\u27c2CUT"
HANG_MAX_S = 60.0
UPSTREAM = httpx.Timeout(60.0, connect=3.0)  # one connection per request: no pool shared by threads


def _peer_open(sock: socket.socket) -> bool:
    """Whether the client is still connected: an answer written to a closed peer is not
    delivered, even when the kernel accepts the bytes."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def _chunk(content: str) -> bytes:
    obj = {
        "id": "chatcmpl-chaos",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class FaultProxy:
    """A threaded HTTP server; ``mode`` may be switched at any time (it applies per request).

    ``tasks`` maps a task's system prompt to (task name, labels or None for generate tasks).
    """

    def __init__(
        self, upstream: str, tasks: dict[str, tuple[str, list[str] | None]], port: int = 0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.delivered: Counter[str] = Counter()  # task -> complete valid answers handed over
        self.delivered_prompts: Counter[tuple[str, str]] = Counter()  # (task, user message)
        self.undelivered: Counter[str] = Counter()  # "task:why" -> large-LM answers not delivered
        self.seen: Counter[str] = Counter()  # "mode:plain|stream" -> requests
        self._tasks = tasks
        self._matchers = {s: LabelMatcher(labs) for s, (_, labs) in tasks.items() if labs}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        self.mode = mode

    def stats(self) -> dict[str, Any]:
        """The counters, for the bench to compare with what reached the gateway's store."""
        with self._lock:
            prompts = [[t, u, n] for (t, u), n in self.delivered_prompts.items()]
            return {
                "mode": self.mode,
                "delivered": dict(self.delivered),
                "undelivered": dict(self.undelivered),
                "seen": dict(self.seen),
                "delivered_prompts": prompts,
            }

    def _handed(self, who: tuple[str, str], text: str, complete: bool, alive: bool) -> None:
        """One answer of the large LM passed through: delivered when complete, to a client
        still connected, and for classify tasks naming a label (the gateway keeps no
        demonstration of an answer outside the label set); else why not, for diagnosis."""
        system, user = who
        task = self._tasks.get(system, ("?", None))[0]
        matcher = self._matchers.get(system)
        why = (
            "unfinished"
            if not complete
            else "client_gone"
            if not alive
            else "outside_labels"
            if matcher is not None and matcher.match_text(text) is None
            else None
        )
        with self._lock:
            if why is None:
                self.delivered[task] += 1
                self.delivered_prompts[(task, user)] += 1
            else:
                self.undelivered[f"{task}:{why}"] += 1

    def _hang(self, sock: socket.socket, mode: str) -> None:
        deadline = time.monotonic() + HANG_MAX_S
        while time.monotonic() < deadline:
            if self.mode != mode or not _peer_open(sock):
                return
            time.sleep(0.05)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _start_sse(self) -> None:
                self.close_connection = True  # the stream ends when the socket closes
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()

            def _control(self, raw: bytes) -> None:
                """The bench's loopback calls: switch the mode, read the counters."""
                if self.command == "GET" and self.path == "/_chaos/stats":
                    self._send(200, json.dumps(proxy.stats(), ensure_ascii=False).encode())
                    return
                if self.command != "POST" or self.path != "/_chaos/mode":
                    self._send(404, b'{"error": "chaos proxy: no such control route"}')
                    return
                try:
                    proxy.set_mode(json.loads(raw)["mode"])
                except (ValueError, TypeError, KeyError) as e:
                    self._send(400, json.dumps({"error": repr(e)}).encode())
                    return
                self._send(200, json.dumps({"mode": proxy.mode}).encode())

            def do_GET(self) -> None:
                if self.path.startswith("/_chaos/"):
                    self._control(b"")
                    return
                mode = proxy.mode
                if mode == "hang":
                    proxy._hang(self.connection, mode)
                    self.close_connection = True
                    return
                r = httpx.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=10)
                self._send(r.status_code, r.content)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.startswith("/_chaos/"):
                    self._control(raw)
                    return
                mode = proxy.mode
                try:
                    body = json.loads(raw)
                    msgs = body.get("messages") or []
                    system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
                    who = (system, str(msgs[-1]["content"]))
                    stream = bool(body.get("stream"))
                except (ValueError, AttributeError, TypeError, KeyError, IndexError):
                    self._send(400, b'{"error": {"message": "chaos proxy: bad request"}}')
                    return
                with proxy._lock:
                    proxy.seen[f"{mode}:{'stream' if stream else 'plain'}"] += 1
                try:
                    self._fault(mode, raw, who, stream)
                except (BrokenPipeError, ConnectionResetError, httpx.HTTPError):
                    self.close_connection = True  # the client or the upstream went away

            def _fault(self, mode: str, raw: bytes, who: tuple[str, str], stream: bool) -> None:
                if mode == "hang":
                    proxy._hang(self.connection, mode)
                    self.close_connection = True
                elif mode == "http500":
                    self._send(500, b'{"error": {"message": "chaos: internal error"}}')
                elif mode == "http429":
                    body = b'{"error": {"message": "chaos: rate limited"}}'
                    self._send(429, body, {"retry-after": "1"})
                elif mode == "junk" and stream:
                    self._start_sse()
                    self.wfile.write(b"data: {not json\n\n")
                elif mode == "junk":
                    self._send(200, b"<html>chaos: not json</html>")
                elif mode == "empty" and stream:
                    self._start_sse()
                elif mode == "empty":
                    self._send(200, b'{"id": "chatcmpl-chaos", "object": "chat.completion", '
                               b'"choices": []}')  # fmt: skip
                elif stream:
                    self._stream(raw, who, cut=mode == "cut")
                else:
                    self._plain(raw, who, cut=mode == "cut")

            def _plain(self, raw: bytes, who: tuple[str, str], cut: bool) -> None:
                r = httpx.post(
                    proxy.upstream + "/chat/completions",
                    content=raw,
                    headers={"content-type": "application/json"},
                    timeout=UPSTREAM,
                )
                if r.status_code != 200:
                    self._send(r.status_code, r.content)
                    return
                data = r.json()
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
                if cut:
                    choice["message"]["content"] = text[:12] + MARKER
                    choice["finish_reason"] = None
                    choice["logprobs"] = None
                    self._send(200, json.dumps(data, ensure_ascii=False).encode())
                    return
                alive = _peer_open(self.connection)
                self._send(200, r.content)
                proxy._handed(who, text, choice.get("finish_reason") is not None, alive)

            def _stream(self, raw: bytes, who: tuple[str, str], cut: bool) -> None:
                url = proxy.upstream + "/chat/completions"
                headers = {"content-type": "application/json"}
                with httpx.stream("POST", url, content=raw, headers=headers, timeout=UPSTREAM) as r:
                    if r.status_code != 200:
                        self._send(r.status_code, r.read())
                        return
                    self._start_sse()
                    parts, deltas, finished = [], 0, False
                    for line in r.iter_lines():
                        data = line[5:].strip() if line.startswith("data:") else None
                        if cut and data is not None:
                            obj = None if data == "[DONE]" else json.loads(data)
                            choice = ((obj or {}).get("choices") or [{}])[0]
                            if obj is None or choice.get("finish_reason") or deltas >= 2:
                                break
                            deltas += bool((choice.get("delta") or {}).get("content"))
                        elif data == "[DONE]":  # the last line: hand it over only to a live peer
                            alive = _peer_open(self.connection)
                            if finished and alive:
                                self.wfile.write(b"data: [DONE]\n\n")
                                self.wfile.flush()
                            proxy._handed(who, "".join(parts), finished, alive)
                            return
                        elif data is not None:
                            choice = (json.loads(data).get("choices") or [{}])[0]
                            parts.append((choice.get("delta") or {}).get("content") or "")
                            finished = finished or bool(choice.get("finish_reason"))
                        self.wfile.write(line.encode() + b"\n")
                        self.wfile.flush()
                    if cut:
                        self.wfile.write(_chunk(MARKER))
                        self.wfile.flush()
                    else:  # the upstream closed without [DONE]
                        proxy._handed(who, "".join(parts), False, True)

        return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve until terminated (the bench sends SIGTERM; the kernel's death signal if it dies)."""
    ap = argparse.ArgumentParser(prog="python -m bench.chaos_proxy", description=__doc__)
    ap.add_argument("--upstream", required=True, help="the large LM's base URL (.../v1)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument(
        "--tasks-json",
        required=True,
        help='a JSON file: {"system prompt": ["task", ["label", ...] or null], ...}',
    )
    args = ap.parse_args(argv)
    tasks = json.loads(Path(args.tasks_json).read_text())
    proxy = FaultProxy(args.upstream, {s: (t, labs) for s, (t, labs) in tasks.items()}, args.port)
    print(f"chaos proxy on 127.0.0.1:{proxy.port} -> {proxy.upstream}", flush=True)
    try:
        proxy.httpd.serve_forever(poll_interval=0.05)
    finally:
        proxy.httpd.server_close()


if __name__ == "__main__":
    main()
