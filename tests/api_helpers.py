"""Helpers shared by the HTTP API tests: a gateway over the test configuration, driven over ASGI
(``gateway``) or served for real by uvicorn (``live_gateway``), and its stats."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from app.settings import Settings
from cascade.llm_server import LocalLLMServer, free_port
from tests.conftest import build_app, make_settings, running_app, write_config

LEVELS = ["logistic", "encoder", "small", "large"]
COSTS = {"logistic": 0.0001, "encoder": 0.01, "small": 0.1, "large": 1.0}
ALL_LEVELS_COST = sum(COSTS.values())  # a request that went through every level


def edit_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def gateway_settings(
    root: Path,
    large_url: str,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    settings: dict[str, object] | None = None,
    **config_kw: Any,
) -> Settings:
    """The test configuration (``write_config`` with ``config_kw``, then ``edit``) written under
    ``root``, and settings over it with the data under ``root`` too.

    The in-process learner is off: a version it published mid-test would change the cache key
    and make cache assertions racy. Redis when ``redis_url`` is given, else the embedded store;
    ``settings`` overrides any of it last.
    """
    root.mkdir(parents=True, exist_ok=True)
    path = write_config(root / "config.yaml", large_url, **config_kw)
    if edit is not None:
        edit_config(path, edit)
    overrides: dict[str, object] = {"CASCADE_LEARNER": False}
    if redis_url is not None:
        overrides.update(REDIS_URL=redis_url, CASCADE_REDIS_PREFIX=prefix or "cg")
    overrides.update(settings or {})
    return make_settings(root, path, **overrides)


def gateway(
    root: Path, shared: dict[str, object], large_url: str, **kw: Any
) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """The app over ``gateway_settings(root, large_url, **kw)``, over httpx's ASGI transport."""
    return running_app(gateway_settings(root, large_url, **kw), shared)


@dataclass
class Live:
    url: str
    settings: Settings
    app: Any


@contextlib.contextmanager
def serve_app(
    settings: Settings, shared: dict[str, object], startup_timeout_s: float = 120.0
) -> Iterator[Live]:
    """The app served for real: uvicorn on a free loopback port, in a thread of this process,
    for clients that need a socket (the ``openai`` client, a browser, SSE bytes on the wire)."""
    app = build_app(settings, shared)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def live_gateway(
    root: Path, shared: dict[str, object], large_url: str, **kw: Any
) -> contextlib.AbstractContextManager[Live]:
    """Like ``gateway`` (the same settings, learner off), served over real HTTP."""
    return serve_app(gateway_settings(root, large_url, **kw), shared)


def live_gateway_fixture(name: str, **kw: Any) -> Any:
    """A module-scoped fixture: ``live_gateway(**kw)`` over the session's SmolLM2 server, its
    data in a folder named after ``name``, shared by the module's tests."""

    @pytest.fixture(scope="module")
    def live(
        tmp_path_factory: pytest.TempPathFactory,
        shared_backends: dict[str, object],
        smol_server: LocalLLMServer,
    ) -> Iterator[Live]:
        root = tmp_path_factory.mktemp(name)
        with live_gateway(root, shared_backends, smol_server.base_url, **kw) as gw:
            yield gw

    return live


async def task_stats(client: httpx.AsyncClient, task: str, window: str = "all") -> dict[str, Any]:
    r = await client.get("/admin/stats", params={"window": window})
    assert r.status_code == 200, r.text
    return r.json()["tasks"][task]


async def wait_for_stats(
    client: httpx.AsyncClient,
    task: str,
    ready: Callable[[dict[str, Any]], bool],
    timeout_s: float = 20.0,
) -> dict[str, Any]:
    """Poll /admin/stats until ``ready`` (counters of other processes flush in the background)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        r = await client.get("/admin/stats")
        if r.status_code == 200:
            last = r.json()["tasks"][task]
            if ready(last):
                return last
        else:
            last = r.text
        await asyncio.sleep(0.2)
    raise AssertionError(f"stats never got there; last: {last}")
