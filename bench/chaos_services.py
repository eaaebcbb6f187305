"""The processes ``bench chaos`` runs and tears down: a private Redis, the fault proxy, the gateway.

Each is its own process, so that none of them shares a GIL with the load clients whose
latencies are measured; all are stopped on every way out of ``services`` (an error, Ctrl-C,
SIGTERM), and the proxy and the gateway also die with the bench if it is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from cascade.llm_server import LocalLLMServer, _die_with, free_port

ROOT = Path(__file__).resolve().parent.parent
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREFIX = "chaos"
ADMIN_TOKEN = "chaos-admin-token"
EXE = Path(sys.executable).with_name("cascade-gateway")


class RedisProc:
    """A private redis-server on a fixed loopback port. AOF with fsync on every write, as a
    production Redis would run: SIGKILL then loses nothing the gateway was told is stored, so
    demonstrations missing afterwards are the gateway's, not Redis's. (No death signal: the
    bench restarts it from a worker thread, whose exit would kill it.)"""

    start_timeout_s = 30.0  # replaying the AOF on a busy machine takes a while

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port, self.data_dir = port or free_port(), data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                client.close()
                return self
            time.sleep(0.05)  # a ConnectionError: not up yet, or still replaying its AOF
        raise RuntimeError("the private redis-server did not start")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            _end(self.proc, self.proc.terminate, self.proc.kill)


def _end(proc: subprocess.Popen[bytes], term: Any, kill: Any, timeout_s: float = 10.0) -> int:
    """Ask a child to stop, then make it: its exit code (-9 when it had to be killed)."""
    with contextlib.suppress(ProcessLookupError):
        term()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill()
        proc.wait(timeout=10)
        return -signal.SIGKILL


#: Niceness of the processes that stand in for other machines (the large-LM endpoint and its
#: fault proxy, the learner): on one 2-core box they would otherwise take CPU from the gateway
#: replica under test, which in a deployment runs beside none of them (docs/SCALING.md).
REMOTE_NICE = 10


def _renice(pid: int, nice: int) -> None:
    """Every thread of a running process (Linux sets niceness per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, nice: int = 0
) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C on the terminal reaches the bench alone, which stops
    it), killed by the kernel if the bench dies (SIGKILL included)."""
    parent = os.getpid()
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _die_with(parent),
        )


def _wait_ok(
    proc: subprocess.Popen[bytes], url: str, timeout_s: float, what: str, log: Path
) -> None:
    """Until ``url`` answers 200; an error with the log's tail if the child exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited while starting:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the {what} was not ready within {timeout_s:.0f} s:\n{tail(log)}")


def tail(log: Path, n: int = 30) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-n:])


class ProxyControl:
    """The fault proxy (bench/chaos_proxy.py) as a child process, and the loopback calls that
    switch its mode and read its counters."""

    def __init__(self, upstream: str, tasks: dict[str, Any], work: Path) -> None:
        self.port, self.upstream, self.log = free_port(), upstream, work / "proxy.log"
        self.tasks_file = work / "proxy-tasks.json"
        self.tasks_file.write_text(json.dumps(tasks, ensure_ascii=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_chaos"

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "bench.chaos_proxy", "--upstream", self.upstream]
        cmd += ["--port", str(self.port), "--tasks-json", str(self.tasks_file)]
        self.proc = _spawn(cmd, self.log, nice=REMOTE_NICE)
        _wait_ok(self.proc, self.control_url + "/stats", timeout_s, "chaos proxy", self.log)

    def set_mode(self, mode: str) -> None:
        r = httpx.post(self.control_url + "/mode", json={"mode": mode}, timeout=10)
        if r.status_code != 200:
            raise RuntimeError(f"chaos proxy: mode {mode!r}: HTTP {r.status_code} {r.text}")

    def stats(self) -> dict[str, Any]:
        r = httpx.get(self.control_url + "/stats", timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _end(self.proc, self.proc.terminate, self.proc.kill)


class Gateway:
    """``cascade-gateway serve`` in its own session, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = free_port(), env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        cmd = [str(EXE), "serve", "--no-llm-server", "--no-learner", "--host", "127.0.0.1"]
        self.proc = _spawn([*cmd, "--port", str(self.port)], self.log, self.env)
        _wait_ok(self.proc, self.url + "/readyz", timeout_s, "gateway", self.log)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait: a clean exit flushes the outbox of demonstrations."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        self.exit_code = _end(
            self.proc,
            lambda: os.killpg(pid, signal.SIGTERM),
            lambda: os.killpg(pid, signal.SIGKILL),  # no clean stop: the outbox may not flush
            timeout_s,
        )

    def admin_stats(self) -> Any:
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        try:
            r = httpx.get(self.url + "/admin/stats?window=all", headers=auth, timeout=10)
            return r.json() if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as e:
            return f"{type(e).__name__}: {e}"


class Learner:
    """``cascade-gateway learn``: learns from the demonstrations in Redis and publishes the
    versions the gateway hot-loads, as a Redis deployment runs it (docs/SCALING.md)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(EXE), "learn", "--name", "chaos-learner"]
        self.proc = _spawn(cmd, self.log, self.env, nice=REMOTE_NICE)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pid = self.proc.pid
            _end(
                self.proc,
                lambda: os.killpg(pid, signal.SIGTERM),
                lambda: os.killpg(pid, signal.SIGKILL),
            )


def create_api_key(env: dict[str, str]) -> str:
    """One API key in the gateway's own store, made as an operator would (``keys create``
    with the gateway's REDIS_URL and prefix): with a key present, every request without a
    valid one must be refused."""
    cmd = [str(EXE), "keys", "create", "--name", "chaos-bench"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    key = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not key.startswith("cg-"):
        raise RuntimeError(f"keys create failed ({r.returncode}): {r.stdout}{r.stderr}")
    return key


def task_prompts(config: Path) -> dict[str, tuple[str, list[str] | None]]:
    """System prompt -> (task, labels): how the proxy tells the tasks' large-LM calls apart."""
    tasks = yaml.safe_load(config.read_text())["tasks"]
    return {t["prompt"]["system"]: (name, t.get("labels")) for name, t in tasks.items()}


@contextlib.contextmanager
def services(
    work: Path, config: Path, models_dir: Path, llm_threads: int
) -> Iterator[tuple[RedisProc, ProxyControl, Gateway, str]]:
    """Redis, the large LM, the proxy, an API key and the gateway; all torn down on the way
    out, whichever way that is."""
    with contextlib.ExitStack() as stack:
        (work / "redis").mkdir()
        rds = RedisProc(work / "redis")
        stack.callback(rds.stop)
        rds.start()
        smol = LocalLLMServer(
            models_dir / SMOL, alias="smol", n_threads=llm_threads, log_path=work / "llm.log"
        )
        llm = stack.enter_context(smol)
        assert llm.proc is not None
        _renice(llm.proc.pid, REMOTE_NICE)  # it stands in for a pool of its own
        proxy = ProxyControl(llm.base_url, task_prompts(config), work)
        stack.callback(proxy.stop)
        proxy.start()
        ours = ("CASCADE_", "LLM_", "REDIS_", "PROMETHEUS_")  # set here, not inherited
        env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        env.update(
            REDIS_URL=rds.url,
            CASCADE_REDIS_PREFIX=PREFIX,
            LLM_BASE_URL=proxy.base_url,
            LLM_MODEL="smol",
            CASCADE_CONFIG=str(config),
            CASCADE_ADMIN_TOKEN=ADMIN_TOKEN,
            CASCADE_MODELS_DIR=str(models_dir),
            CASCADE_DATA_DIR=str(work / "data"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="info",
        )
        key = create_api_key(env)
        # the Redis layout: the gateway only serves, a learner process of its own learns
        learner = Learner(env, work / "learner.log")
        stack.callback(learner.stop)
        learner.start()
        gw = Gateway(env, work / "gateway.log")
        stack.callback(gw.stop)
        gw.start()
        yield rds, proxy, gw, key
