"""Start llama.cpp's OpenAI-compatible server on loopback for the large LM, and stop it again.

The large level is a real HTTP endpoint even on one machine, so the same code path serves a
local GGUF, a vLLM cluster or OpenAI. ``make serve`` and the benchmarks use this when
``LLM_BASE_URL`` is not set.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx

_SERVER_ENV = ("HOST", "PORT", "CONFIG_FILE")
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def _die_with(parent: int) -> None:
    """In the child, before exec: the kernel kills it when the process (strictly: the
    thread) that started it dies, SIGKILL included, so a killed gateway leaves no ~2 GB server
    behind. If the parent is already gone, exit at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _reap_stale(pid_file: Path, model_path: Path) -> None:
    """Stop a server an earlier run of ours left behind (one started before the kernel's
    death signal existed, or whose parent thread lived on): pid file, and only if that pid
    still runs llama_cpp.server on our model, so a recycled pid is never killed."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if b"llama_cpp.server" not in cmd or str(model_path).encode() not in cmd:
        return
    log.warning("stopping a stale llama_cpp.server (pid %d) left by an earlier run", pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLMServer:
    """``python -m llama_cpp.server`` as a child process; a context manager."""

    def __init__(
        self,
        model_path: Path,
        alias: str,
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
        pid_file: Path | None = None,
    ) -> None:
        if not model_path.is_file():
            raise FileNotFoundError(
                f"large model {model_path} not found; run `cascade-gateway models fetch`"
            )
        self.model_path = model_path
        self.alias = alias
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or min(os.cpu_count() or 2, 8)
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.pid_file = pid_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalLLMServer:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            str(self.n_threads),
            "--n_ctx",
            str(self.n_ctx),
            # its default cuts off an answer being streamed when another request arrives
            # (seen under 8 concurrent streams: 7 cut); queue them instead
            "--interrupt_requests",
            "false",
        ]
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        # llama_cpp.server lets HOST, PORT and CONFIG_FILE in its environment override its
        # flags: `make serve PORT=8123` made it listen on the gateway's own port
        env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
        if self.pid_file is not None:
            _reap_stale(self.pid_file, self.model_path)
        parent = os.getpid()
        self.proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=lambda: _die_with(parent),
        )
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.proc.pid}\n")
        try:
            self._wait_ready()
        except BaseException:  # a timeout, or SIGTERM/Ctrl-C while the model loads
            self.stop()  # its own session: no signal to us reaches it
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with code {self.proc.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server did not answer within {self.ready_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


LOCAL_LLM_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@contextlib.contextmanager
def local_large_llm(models_dir: Path, log_dir: Path, enabled: bool = True) -> Iterator[str | None]:
    """Start the default large LM on loopback (unless disabled); yield its base URL or None.

    The model file and alias come from CASCADE_LOCAL_LLM_MODEL and LLM_MODEL; its threads from
    CASCADE_LOCAL_LLM_THREADS (default: the cores, at most 8). llama.cpp's threads spin while
    they wait, so a process that runs another model beside it (a benchmark recording both)
    gives each its own cores: oversubscribed, both ran several times slower here.
    """
    if not enabled:
        yield None
        return
    model = Path(os.environ.get("CASCADE_LOCAL_LLM_MODEL", LOCAL_LLM_MODEL))
    path = model if model.is_absolute() else models_dir / model
    alias = os.environ.get("LLM_MODEL", "qwen2.5-1.5b")
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("CASCADE_LOCAL_LLM_THREADS")
    with LocalLLMServer(
        path,
        alias,
        n_threads=int(threads) if threads else None,
        log_path=log_dir / "llm-server.log",
        pid_file=log_dir / "llm-server.pid",
    ) as server:
        yield server.base_url
