"""Who is calling: clients by API key (app/keys.py), operators by the admin token.

Admin routes fail closed: without a configured admin token they are disabled.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request

from app.deps import gateway
from app.gateway import Gateway

# the key store's two operations, where callers (tests, scripts) have always imported them
__all__ = ["Caller", "admin", "authenticate", "caller"]


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: the API is open (no keys exist)
    name: str | None = None

    @property
    def tenant(self) -> str | None:
        return self.key_id


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


async def caller(request: Request, gw: Gateway = Depends(gateway)) -> Caller:
    """The dependency form of ``authenticate``, for routes off the hot path."""
    return await authenticate(request, gw)


async def authenticate(request: Request, gw: Gateway) -> Caller:
    """Authenticate a client; enforce its requests-per-minute limit.

    The hot routes call this directly: resolving it (and the gateway) as FastAPI dependencies
    cost a cache hit ~15% of its in-process time."""
    cache = gw.keys
    if not await cache.any_keys(gw.store):
        return Caller(None)
    key = _bearer(request)
    if key is None:
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"www-authenticate": "Bearer"},
        )
    rec = await cache.lookup(gw.store, key)
    if rec is None:
        raise HTTPException(401, "invalid API key", headers={"www-authenticate": "Bearer"})
    if rec.get("revoked"):
        raise HTTPException(403, f"API key {rec['id']} was revoked")
    rpm = rec.get("rpm")
    if rpm:
        allowed, retry = await gw.store.rate_hit(f"key:{rec['id']}", int(rpm))
        if not allowed:
            raise HTTPException(
                429,
                f"rate limit of {rpm} requests per minute exceeded for key {rec['id']}",
                headers={"retry-after": str(max(1, int(retry + 0.999)))},
            )
    return Caller(rec["id"], rec.get("name"))


async def admin(request: Request, gw: Gateway = Depends(gateway)) -> str:
    """Fail closed: no configured token means the admin API is off."""
    token = gw.settings.admin_token
    if not token:
        raise HTTPException(
            403, "admin routes are disabled: set CASCADE_ADMIN_TOKEN to enable them"
        )
    # x-admin-token leaves Authorization to an API key: either header may carry the token
    given = [t for t in (request.headers.get("x-admin-token"), _bearer(request)) if t]
    if not given:
        raise HTTPException(
            401,
            "admin token required: send 'Authorization: Bearer <token>' or 'x-admin-token'",
            headers={"www-authenticate": "Bearer"},
        )
    if not any(hmac.compare_digest(t.encode(), token.encode()) for t in given):
        raise HTTPException(403, "wrong admin token")
    return "admin"
