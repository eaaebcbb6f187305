"""Admin views: deferral rates, cost saved and agreement with the large LM, per task and level."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from app.deps import gateway
from app.main import Gateway
from cascade.stats import task_stats
from cascade.store.base import WINDOWS

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/stats")
async def stats(
    window: str = Query("all", description="5m, 1h, 24h or all"),
    gw: Gateway = Depends(gateway),
) -> dict[str, Any]:
    """Counters are shared through the store, so every process sees the same totals."""
    if window not in WINDOWS:
        raise HTTPException(422, f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    await gw.store.flush_counters()
    out: dict[str, Any] = {"window": window, "store": gw.store.describe(), "tasks": {}}
    for name, rt in gw.cascade.tasks.items():
        counters = await gw.store.read_counters(name, WINDOWS[window])
        t = task_stats(counters, [lv.name for lv in rt.levels])
        t["version"] = rt.version
        out["tasks"][name] = t
    return out
