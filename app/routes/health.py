"""Liveness and readiness.

Readiness says whether this process can serve, not how busy its upstreams are: the large LM
counts as up while its recent calls succeed or are in flight (a ping queued behind
generations on a busy llama.cpp server would time out and pull a healthy gateway out of
rotation), and is probed only when idle or after calls failed. A store that does not answer
is reported but leaves the process ready once it knows whether API keys exist: every replica
shares the store, and failing them all would turn a Redis outage the gateway can ride out
(local outcome cache, outbox for demonstrations) into a full one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.deps import gateway
from app.gateway import Gateway
from cascade.levels.lm import OpenAILevel

router = APIRouter(tags=["health"])

RECENT_S = 30.0  # an upstream that answered this recently needs no probe
PROBE_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "not ready: the large LM fails, or API keys are unknown"}},
)
async def readyz(gw: Gateway = Depends(gateway)) -> JSONResponse:
    """Ready when the large-LM endpoints answer and API keys can be checked."""
    checks: dict[str, Any] = {}
    try:
        store_ok = await asyncio.wait_for(gw.store.ping(), timeout=1.0)
    except Exception:
        store_ok = False
    # without the store, requests can be served only if the key table was read before
    keys_known = gw.keys is None or gw.keys.known
    checks["store"] = {"ok": store_ok, "required": not keys_known, **gw.store.describe()}
    seen: dict[str, bool] = {}
    for name, rt in gw.cascade.tasks.items():
        large = rt.large
        if isinstance(large, OpenAILevel):
            backend = large.backend
            url = backend.base_url
            if url not in seen:
                h = backend.health
                seen[url] = (h.recent(RECENT_S) and not h.failing()) or await backend.ping(
                    timeout_s=PROBE_TIMEOUT_S
                )
            checks[f"large:{name}"] = {"ok": seen[url], "url": url, "model": backend.model}
        else:
            checks[f"large:{name}"] = {"ok": True, "in_process": large.name}
    down = [k for k, v in checks.items() if not v["ok"]]
    blocking = [k for k in down if k != "store" or checks["store"]["required"]]
    body = {
        "status": "not ready" if blocking else ("degraded" if down else "ready"),
        "down": down,
        "checks": checks,
    }
    return JSONResponse(body, status_code=503 if blocking else 200)
