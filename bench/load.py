"""``cascade-gateway bench load``: throughput and latency of the gateway's cheapest paths.

Two paths are measured, with 1, 2 and 4 uvicorn workers, at 1, 8 and 64 connections, by wrk
in another process: the cache-hit path (a repeated request) and the logistic-answers path (the
first level answers; ``cache: false``). In the same run the same load goes to a *floor*: a
minimal FastAPI app that does only what the cache-hit path cannot avoid (validate the body, one
Redis GET, return JSON). The ratios to the floor are the figures; absolute numbers on a shared
2-core machine are not. The gateway's own overhead is read from ``x-cascade-overhead-ms``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.flags import arg
from bench.procs import process
from cascade.llm_server import free_port

FLOOR_APP = """
import os, json
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import BaseModel, Field

class Req(BaseModel):
    task: str = Field(min_length=1)
    input: str = Field(min_length=1)
    cache: bool = True

app = FastAPI()
r = aioredis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=0.1)

@app.post("/generate")
async def generate(body: Req):
    hit = await r.get("floor:" + body.task + ":" + body.input)
    return json.loads(hit) if hit else {"output": None}
"""

CONFIG = """
backends:
  large: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: unused, max_retries: 0}
tasks:
  bench:
    kind: classify
    labels: [positive, negative]
    levels:
      - {name: logistic, kind: logistic, cost: 0.0001, policy: {kind: threshold, threshold: 0.0}}
      - {name: large, kind: openai, backend: large, cost: 1.0}
"""

LUA = """
wrk.method = "POST"
wrk.body = [[BODY]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("LAT p50=%f p99=%f\\n", latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadArgs:
    """``bench load``'s arguments; each is also its flag (bench/flags.py)."""

    workers: tuple[int, ...] = arg((1, 2, 4), "e.g. 1,2,4")
    connections: tuple[int, ...] = arg((1, 8, 64), "e.g. 1,8,64")
    duration_s: int = arg(5, "seconds per point", flag="duration")
    redis_url: str = arg("redis://127.0.0.1:6379/0")
    out: Path | None = arg(None, "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


def wrk(url: str, body: dict[str, Any], connections: int, duration_s: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.replace("BODY", json.dumps(body)))
        script = f.name
    threads = 1 if connections < 8 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"LAT p50=([\d.]+) p99=([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert lat is not None
    return {
        "rps": rps,
        "p50_ms": float(lat.group(1)) / 1000,
        "p99_ms": float(lat.group(2)) / 1000,
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def overhead_sample(url: str, body: dict[str, Any], connections: int, n: int) -> list[float]:
    """x-cascade-overhead-ms from ``n`` requests sent by ``connections`` concurrent clients."""
    import asyncio

    async def run() -> list[float]:
        values: list[float] = []
        async with httpx.AsyncClient(timeout=10) as client:

            async def worker(k: int) -> None:
                for _ in range(k):
                    r = await client.post(url, json=body)
                    values.append(float(r.headers["x-cascade-overhead-ms"]))

            await asyncio.gather(*(worker(n // connections) for _ in range(connections)))
        return values

    return asyncio.run(run())


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


_SEED_TEXTS = {
    "positive": ["a warm, funny film", "wonderful and moving", "a delight", "great fun"],
    "negative": ["a dull, lifeless film", "tedious and flat", "a mess", "painfully boring"],
}


def _seed(redis_url: str, prefix: str, config: Path) -> None:
    """Publish a learned logistic level so that it answers every request (no LM needed); its
    accuracy does not matter here, only that it answers."""
    import asyncio

    from cascade.config import load_config
    from cascade.levels.base import Demo
    from cascade.levels.logistic import LogisticLevel
    from cascade.store.redis import RedisStore
    from cascade.versions import TaskState, dump_state

    task = load_config(config).tasks["bench"]
    level = LogisticLevel(task.levels[0], task)
    pairs = [(t, lab) for lab, texts in _SEED_TEXTS.items() for t in texts]
    level.learn([Demo(str(i), t, lab, lab, {}) for i, (t, lab) in enumerate(pairs)])
    blob = dump_state(TaskState("bench", task.labels, levels={"logistic": level.state()}))

    async def put() -> None:
        store = RedisStore(redis_url, Path(tempfile.mkdtemp()), prefix=prefix)
        await store.put_version("bench", blob)
        await store.slow.set(
            "floor:bench:a warm, funny, wonderful film",
            json.dumps({"output": "positive", "label": "positive"}),
        )
        await store.close()

    asyncio.run(put())


def prepare(redis_url: str) -> dict[str, str]:
    """A seeded Redis prefix, the gateway's config and the floor app in a fresh folder: the
    environment both servers (and bench/hotpath.py) run with."""
    prefix = f"cgload-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="cg-load-"))
    (work / "config.yaml").write_text(CONFIG)
    (work / "floor.py").write_text(FLOOR_APP)
    _seed(redis_url, prefix, work / "config.yaml")
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "CASCADE_REDIS_PREFIX": prefix,
        "CASCADE_CONFIG": str(work / "config.yaml"),
        "CASCADE_LEARNER": "false",
        "CASCADE_DATA_DIR": str(work / "data"),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(work),
    }


def load_bench(args: LoadArgs) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian package wrk: apt-get install wrk)")
    env = prepare(args.redis_url)
    text = "a warm, funny, wonderful film"
    bodies = {
        "cache_hit": {"task": "bench", "input": text},
        "logistic": {"task": "bench", "input": text, "cache": False},
    }
    rows: list[dict[str, Any]] = []
    overhead: dict[str, float] = {}
    exe = str(Path(sys.executable).parent / "cascade-gateway")
    for workers in args.workers:
        port, fport = free_port(), free_port()
        gw = [exe, "serve", "--port", str(port), "--workers", str(workers), "--no-llm-server"]
        fl = [
            sys.executable,
            "-m",
            "uvicorn",
            "floor:app",
            "--port",
            str(fport),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        with (
            process(gw, env, f"http://127.0.0.1:{port}/healthz"),
            process(fl, env, f"http://127.0.0.1:{fport}/docs"),
        ):
            gurl, furl = f"http://127.0.0.1:{port}/generate", f"http://127.0.0.1:{fport}/generate"
            for _ in range(3):  # versions load, the cache is filled
                httpx.post(gurl, json=bodies["cache_hit"], timeout=10)
                time.sleep(0.5)
            for conns in args.connections:
                floor = wrk(furl, bodies["cache_hit"], conns, args.duration_s)
                for path, body in bodies.items():
                    g = wrk(gurl, body, conns, args.duration_s)
                    rows.append(
                        {
                            "workers": workers,
                            "connections": conns,
                            "path": path,
                            "rps": g["rps"],
                            "p50_ms": g["p50_ms"],
                            "p99_ms": g["p99_ms"],
                            "errors": g["errors"],
                            "floor_rps": floor["rps"],
                            "floor_p50_ms": floor["p50_ms"],
                            "floor_p99_ms": floor["p99_ms"],
                            "rps_vs_floor": round(g["rps"] / floor["rps"], 3),
                            "p50_minus_floor_ms": round(g["p50_ms"] - floor["p50_ms"], 3),
                        }
                    )
                    print(
                        f"[bench load] workers={workers} conns={conns} {path}: "
                        f"{g['rps']:.0f} req/s ({g['rps'] / floor['rps']:.0%} of floor "
                        f"{floor['rps']:.0f}), p50 {g['p50_ms']:.2f} ms",
                        flush=True,
                    )
            if workers == args.workers[0]:
                for path, body in bodies.items():
                    xs = overhead_sample(gurl, body, 8, 4000)
                    overhead[path] = {
                        "p50_ms": round(_pct(xs, 0.5), 3),
                        "p99_ms": round(_pct(xs, 0.99), 3),
                        "n": len(xs),
                    }
    from bench.hotpath import measure

    cpu: dict[str, Any] = {kind: measure(kind, env) for kind in ("gateway", "floor")}
    cpu["floor_over_gateway"] = round(cpu["floor"]["cpu_us"] / cpu["gateway"]["cpu_us"], 3)
    print(f"[bench load] CPU per cache hit in-process: {cpu}", flush=True)
    payload = {
        "duration_s": args.duration_s,
        "runs": rows,
        "overhead_at_8_connections": overhead,
        "cpu_per_cache_hit": cpu,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.write_doc:
        from bench.load_report import write_load_report

        write_load_report(payload)
    return payload
