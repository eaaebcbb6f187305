"""Gateway and learner subprocesses for multi-process tests, and waiting on them with their
logs at hand when something times out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx


def _exe() -> list[str]:
    script = Path(sys.executable).with_name("cascade-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


class Proc:
    """A ``cascade-gateway`` subprocess in its own session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*_exe(), *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def tail(self, n: int = 30) -> str:
        if not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()[-n:]
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(lines)


async def until(
    what: str,
    check: Callable[[], Awaitable[Any]],
    timeout_s: float,
    procs: list[Proc],
    every_s: float = 0.05,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the processes' logs."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            assert p.alive(), f"{p.name} exited while waiting for {what}\n{p.tail()}"
        try:
            last = await check()
        except (httpx.HTTPError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(every_s)
    logs = "\n".join(p.tail() for p in procs)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last}\n{logs}"
    )


async def together(*coros: Awaitable[Any]) -> None:
    """Run the coroutines at once; on the first failure, cancel the others (no process is
    started, no request sent, after a test has already failed)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
