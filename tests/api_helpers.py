"""Helpers shared by the HTTP API tests: a gateway over one configuration, and its stats."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from cascade.config import load_config
from tests.conftest import make_pool, make_settings, running_app, write_config

LEVELS = ["logistic", "encoder", "small", "large"]
COSTS = {"logistic": 0.0001, "encoder": 0.01, "small": 0.1, "large": 1.0}
ALL_LEVELS_COST = sum(COSTS.values())  # a request that went through every level


def edit_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def _config_file(
    root: Path,
    large_url: str,
    edit: Callable[[dict[str, Any]], None] | None,
    config_kw: dict[str, Any],
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = write_config(root / "config.yaml", large_url, **config_kw)
    if edit is not None:
        edit_config(path, edit)
    return path


@contextlib.asynccontextmanager
async def gateway(
    root: Path,
    shared: dict[str, object],
    large_url: str,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **config_kw: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app over the test configuration (``write_config``), its data under ``root``.

    The in-process learner is off: a version it published mid-test would change the cache key
    and make cache assertions racy. Redis when ``redis_url`` is given, else the embedded store.
    """
    path = _config_file(root, large_url, edit, config_kw)
    overrides: dict[str, object] = {"CASCADE_LEARNER": False}
    if redis_url is not None:
        overrides.update(REDIS_URL=redis_url, CASCADE_REDIS_PREFIX=prefix or "cg")
    settings = make_settings(root, path, **overrides)
    config = load_config(path)
    async with running_app(settings, config, make_pool(config, shared)) as client:
        yield client


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
