"""FastAPI dependencies: the per-process gateway object."""

from __future__ import annotations

from fastapi import Request

from app.gateway import Gateway


async def gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]
