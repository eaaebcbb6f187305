"""Liveness and readiness: /readyz exercises the store and the large-LM endpoints for real."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.deps import gateway
from app.main import Gateway
from cascade.levels.lm import OpenAILevel

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gw: Gateway = Depends(gateway)) -> JSONResponse:
    """Ready when the store answers and every task's large-LM endpoint answers."""
    checks: dict[str, Any] = {}
    try:
        store_ok = await asyncio.wait_for(gw.store.ping(), timeout=1.0)
    except Exception:
        store_ok = False
    checks["store"] = {"ok": store_ok, **gw.store.describe()}
    seen: dict[str, bool] = {}
    for name, rt in gw.cascade.tasks.items():
        large = rt.large
        if isinstance(large, OpenAILevel):
            url = large.backend.base_url
            if url not in seen:
                seen[url] = await large.backend.ping(timeout_s=1.0)
            checks[f"large:{name}"] = {"ok": seen[url], "url": url, "model": large.backend.model}
        else:
            checks[f"large:{name}"] = {"ok": True, "in_process": large.name}
    down = [k for k, v in checks.items() if not v["ok"]]
    body = {"status": "ready" if not down else "not ready", "down": down, "checks": checks}
    return JSONResponse(body, status_code=200 if not down else 503)
