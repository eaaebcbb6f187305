"""The gateway's own time on a request (excluding model time), for x-cascade-overhead-ms."""

from __future__ import annotations

import time

from fastapi import Request


def overhead_ms(request: Request, model_ms: float) -> float:
    t0 = request.scope.get("state", {}).get("cascade_t0")
    if t0 is None:
        return 0.0
    return max(0.0, (time.perf_counter() - t0) * 1000 - model_ms)


def cascade_headers(level: str, cached: bool, overhead: float) -> dict[str, str]:
    return {
        "x-cascade-level": level,
        "x-cascade-cached": "true" if cached else "false",
        "x-cascade-overhead-ms": f"{overhead:.3f}",
    }
