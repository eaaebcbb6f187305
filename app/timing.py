"""The gateway's own time on a request (excluding model time), for x-cascade-overhead-ms."""

from __future__ import annotations

import time

from fastapi import Request


def overhead_ms(request: Request, model_ms: float) -> float:
    t0 = request.scope.get("state", {}).get("cascade_t0")
    if t0 is None:
        return 0.0
    return max(0.0, (time.perf_counter() - t0) * 1000 - model_ms)


def cascade_headers(
    level: str,
    cached: bool,
    overhead: float,
    cache: str | None = None,
    similarity: float | None = None,
) -> dict[str, str]:
    """``x-cascade-cache`` says which cache answered (exact or semantic); a semantic hit also
    says how similar the request it answered was."""
    out = {
        "x-cascade-level": level,
        "x-cascade-cached": "true" if cached else "false",
        "x-cascade-overhead-ms": f"{overhead:.3f}",
    }
    if cache is not None:
        out["x-cascade-cache"] = cache
    if similarity is not None:
        out["x-cascade-similarity"] = f"{similarity:.4f}"
    return out
