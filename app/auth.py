"""API keys (for clients) and the admin token (for operators).

Keys are printed once at creation; only their sha256 is stored, in the shared store, so every
gateway process sees the same keys. When no key exists the API is open (a fresh install);
once one exists, every client must present one. Admin routes fail closed: without a
configured admin token they are disabled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request

from app.deps import gateway
from app.main import Gateway
from cascade.store import Store

TABLE = "api_keys"
_CACHE_S = 5.0  # a revoked key stops working within this many seconds


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: the API is open (no keys exist)
    name: str | None = None

    @property
    def tenant(self) -> str | None:
        return self.key_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(store: Store, name: str, rpm: int | None = None) -> tuple[str, dict[str, Any]]:
    """A new key (returned once, never stored) and its record."""
    key = "cg-" + secrets.token_urlsafe(24)
    h = hash_key(key)
    record = {
        "id": h[:12],
        "name": name,
        "rpm": rpm,
        "created": round(time.time(), 3),
        "revoked": None,
    }
    await store.table_set(TABLE, h, record)
    return key, record


async def revoke_key(store: Store, key_id: str) -> bool:
    for h, rec in (await store.table_all(TABLE)).items():
        if rec.get("id") == key_id and rec.get("revoked") is None:
            await store.table_set(TABLE, h, {**rec, "revoked": round(time.time(), 3)})
            return True
    return False


class KeyCache:
    """Per-process cache of key lookups, so the hot path rarely pays a store round trip.

    Stale answers are served while one background refresh runs, so a slow or stopped store
    costs a request nothing once something is known. Nothing known and the store unreachable
    is the one case where whether keys exist cannot be told: that fails closed (503), since a
    gateway that starts during an outage must not open an API that has keys.
    """

    def __init__(self, timeout_s: float = 0.5) -> None:
        self.timeout_s = timeout_s
        self._any: tuple[float, bool] | None = None  # None: never read from the store
        self._keys: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._refreshing: set[str] = set()  # "" for the key table, else a key's hash
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def known(self) -> bool:
        """Whether the key table was ever read: without it, no request can be authorised."""
        return self._any is not None

    async def _read(self, store: Store, what: str) -> None:
        """Read the table (``what`` "") or one key into the cache; raise when the store fails."""
        try:
            if what:
                rec = await asyncio.wait_for(store.table_get(TABLE, what), self.timeout_s)
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[what] = (time.monotonic(), rec)
            else:
                table = await asyncio.wait_for(store.table_all(TABLE), self.timeout_s)
                self._any = (time.monotonic(), bool(table))
        except Exception:
            store.errors += 1
            raise
        finally:
            self._refreshing.discard(what)

    def _refresh_later(self, store: Store, what: str) -> None:
        if what in self._refreshing:
            return
        self._refreshing.add(what)
        task = asyncio.create_task(self._read(store, what))
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))

    async def any_keys(self, store: Store) -> bool:
        if self._any is None:
            try:
                await self._read(store, "")
            except Exception:
                raise _unknown("whether API keys exist") from None
        assert self._any is not None
        at, value = self._any
        if time.monotonic() - at > _CACHE_S:
            self._refresh_later(store, "")
        return value

    async def lookup(self, store: Store, key: str) -> dict[str, Any] | None:
        h = hash_key(key)
        hit = self._keys.get(h)
        if hit is None:
            try:
                await self._read(store, h)
            except Exception:
                raise _unknown("the API key") from None
            hit = self._keys[h]
        elif time.monotonic() - hit[0] > _CACHE_S:
            self._refresh_later(store, h)
        return hit[1]


def _unknown(what: str) -> HTTPException:
    return HTTPException(
        503,
        f"cannot check {what}: the store is unreachable; retry shortly",
        headers={"retry-after": "1"},
    )


def _forget(tasks: set[asyncio.Task[None]]) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a failed refresh keeps the stale answer; it was counted

    return done


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
    cache: KeyCache = gw.keys
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
