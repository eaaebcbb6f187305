"""``bench tasks``: a gateway with many classify tasks on the same backends, started for real.

A deployment that adds a task per customer or per use grows its configuration, not its
models: every level names a backend, and a backend is loaded once however many levels name
it. This starts ``cascade-gateway serve`` (embedded store, the large LM at an address that is
never called) with 1, 10 and 50 copies of each classify task of the configuration and
measures, per size: seconds from spawn to ``/healthz`` (the serve log is kept in its data
directory), the process's resident memory once
up, and that ``/admin/tasks`` lists every task. The marginal memory per task is what a task's
own state costs (its levels' learned weights and policies), next to the shared models.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.flags import arg
from bench.procs import process
from bench.semcache_timing import rss_bytes
from cascade.llm_server import free_port

#: The large LM's address in these runs: nothing listens there, and nothing calls it.
NOWHERE = "http://127.0.0.1:9/v1"


@dataclass
class TasksArgs:
    """``bench tasks``'s arguments; each is also its flag."""

    counts: tuple[int, ...] = arg((1, 10, 50), "copies of each classify task per run")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    timeout_s: float = arg(600.0, "longest wait for one gateway to come up")
    out: Path | None = arg(Path("bench/results/tasks.json"), "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


def many_tasks(config: dict[str, Any], copies: int) -> dict[str, Any]:
    """The configuration with ``copies`` of each classify task (``name-00`` ...), same
    backends; generate tasks are left out, so the count is the classify tasks'."""
    classify = {n: t for n, t in config["tasks"].items() if t.get("kind") == "classify"}
    tasks = {f"{n}-{i:02d}": t for i in range(copies) for n, t in classify.items()}
    return {**config, "tasks": tasks}


def start_and_measure(config_path: Path, timeout_s: float) -> dict[str, Any]:
    """Spawn ``serve`` with this configuration; seconds until /healthz answers, resident
    memory once up, and the tasks /admin/tasks lists."""
    import httpx

    port, token = free_port(), secrets.token_urlsafe(16)
    data = Path(tempfile.mkdtemp(prefix="cg-tasks-"))
    env = {
        **os.environ,
        "CASCADE_CONFIG": str(config_path),
        "CASCADE_DATA_DIR": str(data),
        "CASCADE_ADMIN_TOKEN": token,
        "LLM_BASE_URL": NOWHERE,
    }
    env.pop("REDIS_URL", None)
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with process(cmd, env, f"{url}/healthz", timeout_s, log=data / "serve.log") as proc:
        up_s = time.perf_counter() - t0
        time.sleep(2.0)  # let start-up work that runs after the first answer settle
        rss = rss_bytes(proc.pid) / 2**20
        listed = httpx.get(
            f"{url}/admin/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        ).json()
        # one request per task walks its levels (the large LM is nowhere: the answer comes
        # degraded from the cheap levels), so whatever a task builds on first use is built
        statuses: dict[int, int] = {}
        t1 = time.perf_counter()
        for name in listed.get("tasks", {}):
            body = {"task": name, "input": "an uneven, often charming film"}
            code = httpx.post(f"{url}/generate", json=body, timeout=120.0).status_code
            statuses[code] = statuses.get(code, 0) + 1
        first_s = (time.perf_counter() - t1) / max(len(listed.get("tasks", {})), 1)
        rss_used = rss_bytes(proc.pid) / 2**20
    return {
        "start_s": round(up_s, 2),
        "rss_mb": round(rss, 1),
        "first_request_s": round(first_s, 3),
        "rss_after_requests_mb": round(rss_used, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "listed": listed,
    }


def tasks_bench(args: TasksArgs) -> dict[str, Any]:
    from app.settings import Settings
    from bench.report import write_section
    from bench.stream import write_json

    base_path = args.config or Settings().config_path or Path("deploy/config.yaml")
    base = yaml.safe_load(Path(base_path).read_text())
    points = []
    tmp = Path(tempfile.mkdtemp(prefix="cg-tasks-config-"))
    for n in args.counts:
        cfg = many_tasks(base, n)
        path = tmp / f"tasks-{n}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"tasks: starting a gateway with {len(cfg['tasks'])} tasks ...", flush=True)
        m = start_and_measure(path, args.timeout_s)
        names = sorted(m.pop("listed").get("tasks", {}))
        if names != sorted(cfg["tasks"]):
            raise RuntimeError(f"/admin/tasks lists {len(names)} tasks, not {len(cfg['tasks'])}")
        points.append({"tasks": len(cfg["tasks"]), **m})
        print(points[-1], flush=True)
    first, last = points[0], points[-1]
    extra = max(last["tasks"] - first["tasks"], 1)

    def per_task(key: str) -> float:
        return round((last[key] - first[key]) / extra, 3)

    payload = {
        "config": str(base_path),
        "points": points,
        "marginal_rss_mb_per_task": per_task("rss_mb"),
        "marginal_rss_mb_per_task_after_requests": per_task("rss_after_requests_mb"),
        "marginal_start_s_per_task": per_task("start_s"),
    }
    if args.out is not None:
        write_json(args.out, payload)
    if args.write_doc:
        write_section("tasks", _section(payload))
    return payload


def _section(payload: dict[str, Any]) -> str:
    from bench.report import machine, md_table, stamp

    rows = [
        [
            p["tasks"],
            p["start_s"],
            p["rss_mb"],
            p["first_request_s"],
            p["rss_after_requests_mb"],
            ", ".join(f"{k}: {v}" for k, v in p["statuses"].items()),
        ]
        for p in payload["points"]
    ]
    head = [
        "classify tasks",
        "seconds to /healthz",
        "resident memory (MB)",
        "first request per task (s)",
        "memory after one request per task (MB)",
        "statuses",
    ]
    table = md_table(head, rows)
    return f"""## Many tasks on shared backends (`cascade-gateway bench tasks`)

{stamp()}, {machine()}. `cascade-gateway serve` (embedded store) with copies of each classify
task of `{payload["config"]}`, every copy naming the same backends (the small LM, MiniLM, the
large LM's endpoint): models are loaded once, a task adds its own levels' weights and
policies. Each gateway listed every task on `/admin/tasks`. JSON: `bench/results/tasks.json`.

{table}

Each task beyond the first costs about {payload["marginal_rss_mb_per_task"]} MB of resident
memory at start ({payload["marginal_rss_mb_per_task_after_requests"]} MB once each task has
walked its levels once) and {payload["marginal_start_s_per_task"]} s of start-up. The first
request per task ran every cheap level (the small LM included) and then found the large LM
unreachable, so the gateway answered degraded from the cheap levels (the statuses above):
what that walk builds is what a task needs to serve. A task's learned state grows as it
learns (the encoder head and the probe remember up to 20,000 demonstrations each, in the
learner's process), not at start.
"""
