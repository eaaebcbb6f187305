"""Admin API: deferral rates, cost saved and agreement with the large LM; live policy settings.

Every route here requires the admin token (fail closed); the dashboard page at /admin/ is a
static shell that asks for the token and reads these routes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from app.auth import admin
from app.deps import gateway
from app.gateway import Gateway
from app.schemas import Text
from cascade.runtime import policy_view
from cascade.stats import series_point, task_stats
from cascade.store.base import WINDOWS
from policies import PolicyError

T = TypeVar("T")
router = APIRouter(tags=["admin"])
guarded = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])
STATIC = Path(__file__).resolve().parent.parent / "static"


def _window(window: str) -> int | None:
    if window not in WINDOWS:
        raise HTTPException(422, f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    return WINDOWS[window]


async def _read(call: Awaitable[T], what: str = "statistics are") -> T:
    """Statistics and settings live in the store: when it is unreachable, say so (503)."""
    try:
        return await call
    except (RedisError, OSError) as e:
        raise HTTPException(503, f"{what} unavailable: the store is unreachable ({e})") from None


@guarded.get("/stats")
async def stats(
    window: str = Query("all", description="5m, 1h, 24h or all"),
    gw: Gateway = Depends(gateway),
) -> dict[str, Any]:
    """Counters are shared through the store, so every process sees the same totals."""
    seconds = _window(window)
    await gw.store.flush_counters()
    out: dict[str, Any] = {"window": window, "store": gw.store.describe(), "tasks": {}}
    for name, rt in gw.cascade.tasks.items():
        counters = await _read(gw.store.read_counters(name, seconds))
        t = task_stats(counters, [lv.name for lv in rt.levels])
        t["version"] = rt.version
        for entry in policy_view(rt):
            if "policy" in entry:
                t["levels"][entry["name"]]["policy"] = entry["policy"]
        t["learner_lag"] = await _read(gw.store.demo_lag(name))
        t["learner"] = await _read(gw.store.task_owner(name))  # who learns it (its lease)
        if rt.semantic is not None:  # the gate's live state: every gateway's evidence
            t["semantic_cache"]["gate"] = rt.semantic.report()
        else:
            t["semantic_cache"] = None
        out["tasks"][name] = t
    out["demonstrations_buffered"] = gw.store.demos_buffered
    out["demonstrations_dropped"] = gw.store.demos_dropped
    return out


@guarded.get("/series")
async def series(
    window: str = Query("1h", description="5m, 1h or 24h"),
    gw: Gateway = Depends(gateway),
) -> dict[str, Any]:
    """Per-minute (per-hour for 24h) figures for the dashboard's charts."""
    seconds = _window(window)
    if seconds is None:
        raise HTTPException(422, "series need a bounded window: 5m, 1h or 24h")
    await gw.store.flush_counters()
    out: dict[str, Any] = {"window": window, "tasks": {}}
    for name, rt in gw.cascade.tasks.items():
        rows = await _read(gw.store.read_series(name, seconds))
        names = [lv.name for lv in rt.levels]
        out["tasks"][name] = [series_point(ts, c, names) for ts, c in rows]
    return out


@guarded.get("/tasks")
async def tasks(gw: Gateway = Depends(gateway)) -> dict[str, Any]:
    """The live configuration: levels, policies with their current parameters, versions."""
    out = {}
    for name, rt in gw.cascade.tasks.items():
        settings = await _read(gw.store.table_get("settings", name), "settings are") or {}
        out[name] = {
            "kind": rt.config.kind,
            "labels": rt.config.labels,
            "version": rt.version,
            "levels": policy_view(rt),
            "settings_revision": rt.settings_revision,
            "history": settings.get("history", [])[-20:],
        }
    return {"tasks": out}


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Text = Field(description="the level whose policy to change")
    params: dict[str, float] = Field(min_length=1, description="e.g. {'target_agreement': 0.97}")
    note: Text | None = Field(None, max_length=200)


@guarded.post("/tasks/{task}/policy")
async def set_policy(
    task: str, body: PolicyChange, gw: Gateway = Depends(gateway), who: str = Depends(admin)
) -> dict[str, Any]:
    """Change mu / target_agreement / thresholds at run time, for every process (validated,
    recorded with who and when)."""
    rt = gw.cascade.task(task)
    try:
        pol = rt.policy(body.level)
    except KeyError as e:
        raise HTTPException(404, str(e.args[0])) from None
    try:  # validate on a copy: a refused change must leave nothing half applied
        copy.deepcopy(pol).set_params(**body.params)
    except PolicyError as e:
        raise HTTPException(422, str(e)) from None
    current = await _read(gw.store.table_get("settings", task), "settings are") or {}
    levels = dict(current.get("levels", {}))
    levels[body.level] = {**levels.get(body.level, {}), **body.params}
    revision = int(current.get("revision", 0)) + 1
    entry = {
        "revision": revision,
        "at": round(time.time(), 3),
        "by": who,
        "level": body.level,
        "params": body.params,
        "note": body.note,
    }
    record = {
        "revision": revision,
        "levels": levels,
        "history": [*current.get("history", []), entry][-200:],
    }
    await _read(gw.store.table_set("settings", task, record), "settings are")
    pol.set_params(**body.params)  # here; other processes follow via the store
    rt.overrides, rt.settings_revision = levels, revision
    return {
        "task": task,
        "revision": revision,
        "level": body.level,
        "policy": {"kind": pol.kind, **pol.params()},
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: Gateway = Depends(gateway)) -> Response:
    body, ctype = gw.metrics.exposition()
    return PlainTextResponse(body, media_type=ctype)


@router.get("/admin/", include_in_schema=False)
@router.get("/admin", include_in_schema=False)
async def dashboard() -> FileResponse:
    """A static page: it asks for the admin token and reads the guarded routes above."""
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


router.include_router(guarded)
