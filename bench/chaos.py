"""``cascade-gateway bench chaos``: a real gateway under Redis outages and a failing large LM.

The gateway runs as its own process (``serve``) against a private redis-server and a real
llama.cpp server (SmolLM2) reached through a fault-injecting proxy (bench/chaos_proxy.py). Phase
by phase Redis is SIGKILLed and restarted, SIGSTOPped, and the large LM hangs, fails, rate-limits,
answers junk, cuts its answers short or sends nothing, while C clients send a mixed load:
repeats of earlier answered requests (which a gateway can serve without a model) and new inputs,
on /generate and /v1/chat/completions, plain and streamed. What it measures is what a client and
the operator care about: errors, latency (repeats apart), demonstrations lost, truncated answers
served, cached or learned, 5xx on malformed input, and requests without a valid API key that
were answered anyway. bench/chaos_services.py runs the processes; bench/chaos_report.py turns
the measurements into targets and a docs section.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from bench.chaos_client import BAD_INPUTS, Spec, new_spec, send, send_raw
from bench.chaos_proxy import MARKER
from bench.chaos_report import phase_row, print_phase, summarise, write_chaos_report
from bench.chaos_services import PREFIX, ROOT, Gateway, ProxyControl, RedisProc, services, tail
from bench.flags import arg

CONFIG = ROOT / "bench" / "configs" / "chaos.yaml"
TASKS = ("sentiment", "chat")
BOGUS = "Bearer cg-chaos-bogus-key-0000000000000000"  # the shape of a key, not one
# phase -> proxy mode; the two Redis phases also act on redis-server (see _actions)
PHASES: dict[str, str] = {
    "healthy": "pass",
    "redis_sigkill": "pass",
    "redis_sigstop": "pass",
    "llm_hang": "hang",
    "llm_500": "http500",
    "llm_429": "http429",
    "llm_junk": "junk",
    "llm_cut": "cut",
    "llm_empty": "empty",
    "recovered": "pass",
}


@dataclass
class ChaosArgs:
    """``bench chaos``'s arguments; those declared with ``arg`` are also its flags."""

    # the whole bench is ~10 phases plus ~1 min around them
    phase_s: float = arg(15.0, "seconds per phase (10 phases)")
    clients: int = arg(8, "concurrent clients")
    prewarm: int = 20  # distinct requests answered before the phases: the repeats' pool
    repeat_share: float = 0.7
    request_timeout_s: float = 15.0  # a client gives up: the request counts as "timeout"
    auth_probes: int = 3  # per phase: this many requests with no key, and as many with a bogus one
    llm_threads: int = 1
    seed: int = arg(0)
    config: Path = CONFIG
    models_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("CASCADE_MODELS_DIR", ROOT / "models"))
    )
    out: Path | None = arg(Path("bench/results/chaos.json"), "write the JSON results here")
    records: Path | None = arg(None, "also write every request as JSON lines to this file")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


Action = Callable[[], object]


def _actions(phase: str, rds: RedisProc, duration: float) -> list[tuple[float, Action]]:
    """(seconds into the phase, what to do to Redis then)."""
    if phase == "redis_sigkill":
        return [(0.0, lambda: rds.signal(signal.SIGKILL)), (duration / 2, rds.start)]
    if phase == "redis_sigstop":
        return [
            (0.0, lambda: rds.signal(signal.SIGSTOP)),
            (duration, lambda: rds.signal(signal.SIGCONT)),
        ]
    return []


class Load:
    """The mixed load: repeats from a pool of answered requests, and new inputs."""

    def __init__(self, args: ChaosArgs, client: httpx.AsyncClient, key: str) -> None:
        self.args, self.client = args, client
        self.auth = {"authorization": f"Bearer {key}"}
        self.rng = random.Random(args.seed)
        self.pool: list[Spec] = []
        self.records: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []  # requests without a valid key
        self._n = -1
        self.phase_t0 = time.monotonic()

    def fresh(self) -> Spec:
        self._n += 1
        return new_spec(self.rng, self._n)

    async def one(self, phase: str, spec: Spec, repeat: bool, learn: bool) -> dict[str, Any]:
        at = round(time.monotonic() - self.phase_t0, 2)  # when in its phase it was sent
        rec = await send(self.client, spec, self.args.request_timeout_s, self.auth)
        rec.update(phase=phase, repeat=repeat, input=spec.input, sent_at_s=at)
        self.records.append(rec)
        good = rec["status"] == 200 and not rec["degraded"] and not rec["marker"]
        # the repeats' pool: answers the large LM gave, which every version may serve from
        # the cache (a cheaper level's answer is cached for the version that gave it only)
        by_large = rec.get("level") == "large"
        if learn and not repeat and good and by_large and rec["stream_end"] in (None, "final"):
            self.pool.append(spec)
        return rec

    async def phase(self, phase: str, duration: float, learn: bool, cap: int = 20_000) -> float:
        """C clients for ``duration`` seconds (at most ``cap`` requests); the wall time."""
        t0 = self.phase_t0 = time.monotonic()
        sent = 0

        async def client() -> None:
            nonlocal sent
            while time.monotonic() < t0 + duration and sent < cap:
                sent += 1
                if self.pool and self.rng.random() < self.args.repeat_share:
                    await self.one(phase, self.rng.choice(self.pool), True, learn)
                else:
                    await self.one(phase, self.fresh(), False, learn)

        probes = self._probes(phase, t0, duration)
        # the clients stand in for other machines: a collection pass in this process (its
        # records grow all run) would stall every request in flight and be read as the
        # gateway's latency. A phase's garbage is collected after it.
        gc.collect()
        gc.disable()
        try:
            await asyncio.gather(probes, *(client() for _ in range(self.args.clients)))
        finally:
            gc.enable()
        return time.monotonic() - t0

    async def _probes(self, phase: str, t0: float, duration: float) -> None:
        """Spread over the phase, a request with no key and one with a bogus key: none may be
        answered while keys exist, whatever state Redis or the large LM is in. Every other
        one repeats an answered request, the cache hit a gateway could serve without a model."""
        n = self.args.auth_probes
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + duration * (i + 0.5) / n - time.monotonic()))
            repeat = bool(self.pool) and i % 2 == 0
            spec = self.rng.choice(self.pool) if repeat else self.fresh()
            for kind, headers in (("no_key", {}), ("bogus_key", {"authorization": BOGUS})):
                rec = await send(self.client, spec, self.args.request_timeout_s, headers)
                rec.update(phase=phase, kind=kind, repeat=repeat)
                self.probes.append(rec)


async def _readyz(client: httpx.AsyncClient, stop: asyncio.Event, out: list[Any]) -> None:
    while not stop.is_set():
        try:
            out.append((await client.get("/readyz", timeout=5)).status_code)
        except httpx.HTTPError as e:
            out.append(type(e).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _run_phases(
    args: ChaosArgs, rds: RedisProc, proxy: ProxyControl, gw: Gateway, key: str
) -> dict[str, Any]:
    n = args.clients
    limits = httpx.Limits(max_connections=4 * n, max_keepalive_connections=2 * n)
    timeout = httpx.Timeout(args.request_timeout_s + 5)  # our own deadline comes first
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=timeout) as client:
        load = Load(args, client, key)
        for _ in range(0, args.prewarm, 2):  # the repeats' pool, two at a time
            await asyncio.gather(*(load.one("prewarm", load.fresh(), False, True) for _ in "ab"))
        walls: dict[str, float] = {}
        loadavg: dict[str, float] = {}
        readyz: list[Any] = []
        rechecked = 0
        for phase, mode in PHASES.items():
            proxy.set_mode(mode)
            stop = asyncio.Event()
            polls = [_readyz(client, stop, readyz)] if phase == "healthy" else []
            timers = [_at(s, fn) for s, fn in _actions(phase, rds, args.phase_s)]
            side = asyncio.gather(*polls, *timers)
            walls[phase] = await load.phase(phase, args.phase_s, learn=phase == "healthy")
            loadavg[phase] = round(os.getloadavg()[0], 2)  # how busy the machine was
            stop.set()
            await side
            proxy.set_mode("pass")
            if phase == "llm_cut":  # was a cut answer kept? ask again for every one served
                marked = [r for r in load.records if r["marker"]]
                cut = {Spec(r["route"], r["task"], r["input"]) for r in marked}
                await asyncio.gather(*(load.one("llm_cut:recheck", c, True, False) for c in cut))
                rechecked = len(cut)
            row = phase_row(phase, [r for r in load.records if r["phase"] == phase], walls[phase])
            probes = Counter(str(r["status"]) for r in load.probes if r["phase"] == phase)
            print_phase(row | {"loadavg_1m": loadavg[phase], "auth": dict(probes)})
        t, auth = args.request_timeout_s, load.auth
        bad = [await send_raw(client, what, route, raw, t, auth) for what, route, raw in BAD_INPUTS]
    run = dict(records=load.records, probes=load.probes, walls=walls, readyz=readyz, bad=bad)
    return run | {"rechecked": rechecked, "loadavg": loadavg}


async def _at(delay: float, fn: Action) -> None:
    await asyncio.sleep(delay)
    await asyncio.to_thread(fn)


def stored_demos(url: str, config: Path) -> tuple[dict[str, dict[str, int]], list[list[str]]]:
    """Per task: demonstrations in the store, those holding the cut marker, empty ones, repeats
    of a request id already stored; and each one's (task, user message) as the large LM saw it,
    to match against what the proxy delivered."""
    tasks = yaml.safe_load(config.read_text())["tasks"]
    r = redis.Redis.from_url(url)
    out: dict[str, dict[str, int]] = {}
    prompts: list[list[str]] = []
    for task in TASKS:
        key = f"{PREFIX}:demos:{task}"
        marked = empty = 0
        ids: set[str] = set()
        entries = r.xrange(key)
        for _, fields in entries:
            d = json.loads(fields[b"d"])
            text = str(d.get("output") or "")
            marked += MARKER in text or MARKER in str(d.get("input"))
            empty += not text.strip()
            ids.add(str(d.get("request_id")))
            prompts.append([task, tasks[task]["prompt"]["user"].replace("{input}", d["input"])])
        dup = len(entries) - len(ids)
        out[task] = {"stored": len(entries), "marked": marked, "empty": empty, "duplicates": dup}
    r.close()
    return out, prompts


def chaos_bench(args: ChaosArgs) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cg-chaos-"))
    t0, load_before = time.monotonic(), os.getloadavg()[0]
    # SIGTERM as Ctrl-C: the services are torn down on the way out, none is left behind
    main = threading.current_thread() is threading.main_thread()
    on_term = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
    try:
        with services(work, args.config, args.models_dir, args.llm_threads) as services_up:
            rds, proxy, gw, key = services_up
            print(f"[bench chaos] gateway ready at {gw.url} in {time.monotonic() - t0:.0f} s")
            run = asyncio.run(_run_phases(args, rds, proxy, gw, key))
            run["admin_stats"] = gw.admin_stats()  # its own counters, for diagnosis
            gw.stop()  # flushes the outbox; then count what reached Redis
            run["gateway_exit_code"] = gw.exit_code
            run["gateway_log_tail"] = tail(gw.log, 10)
            run["demos"], run["stored_prompts"] = stored_demos(rds.url, args.config)
            stats = proxy.stats()
            run["delivered_prompts"] = [
                [t, u] for t, u, n in stats["delivered_prompts"] for _ in range(n)
            ]
            run["delivered"], run["undelivered"] = stats["delivered"], stats["undelivered"]
            run["proxy_seen"] = stats["seen"]
    except BaseException:
        print(f"[bench chaos] failed; logs of the gateway, proxy and llama.cpp kept in {work}")
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, on_term)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}
    config |= {"wall_s": round(time.monotonic() - t0, 1), "loadavg_1m_before": load_before}
    payload = summarise(run, config)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    if args.records is not None:
        _write_records(args.records, run)
    if args.write_doc:
        write_chaos_report(payload)
    shutil.rmtree(work, ignore_errors=True)
    return payload


def _write_records(path: Path, run: dict[str, Any]) -> None:
    """Every request as a JSON line, for digging into one run; too big to commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = (("load", run["records"]), ("auth", run["probes"]), ("bad_input", run["bad"]))
    with path.open("w", encoding="utf-8") as f:
        for kind, recs in kinds:
            for rec in recs:
                f.write(json.dumps({"kind": kind} | rec, ensure_ascii=False) + "\n")
