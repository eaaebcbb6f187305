"""CPU time per cache hit, in-process: the gateway against the floor, with no HTTP and no load
generator sharing the cores.

wrk's figures on a shared 2-core machine move by 10-30% from run to run, since wrk, Redis and
the server fight for the same two cores. This measure does not: each app is driven through
its ASGI interface (the whole middleware stack, routing, body validation, the Redis round
trip) in a process of its own, and the process's own CPU time per request is read with
``time.process_time``. The ratio floor/gateway bounds what the cache-hit path can reach on one
core against the floor, whatever the load generator does.

    python -m bench.hotpath gateway 4000     # env as `bench load` sets it
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BODY = json.dumps({"task": "bench", "input": "a warm, funny, wonderful film"}).encode()


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/generate",
        "raw_path": b"/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def _drive(app: Any, n: int) -> dict[str, float]:
    """Start the app's lifespan, warm it, then time ``n`` sequential cache hits."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    life = asyncio.create_task(app({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"app did not start: {started}")

    async def one() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        pending = [{"type": "http.request", "body": BODY, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        await app(_scope(), receive, send)
        return sent

    for _ in range(300):
        sent = await one()
    if sent[0].get("status") != 200 or b"positive" not in sent[1].get("body", b""):
        raise RuntimeError(f"not a cache hit: {sent}")
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await one()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}


def measure(kind: str, env: dict[str, str], n: int = 4000, rounds: int = 3) -> dict[str, float]:
    """Median over ``rounds`` fresh processes of ``python -m bench.hotpath kind n``."""
    runs = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-m", "bench.hotpath", kind, str(n)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {k: round(statistics.median(r[k] for r in runs), 1) for k in ("cpu_us", "wall_us")}


def main() -> None:
    kind, n = sys.argv[1], int(sys.argv[2])
    if kind == "floor":  # bench load writes floor.py and puts its folder on PYTHONPATH
        app = importlib.import_module("floor").app
    else:
        from app.main import create_app

        app = create_app()
    print(json.dumps(asyncio.run(_drive(app, n))))


if __name__ == "__main__":
    main()
