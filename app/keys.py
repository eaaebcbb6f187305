"""API keys: created and revoked in the shared store, and looked up through a per-process cache.

Keys are printed once at creation; only their sha256 is stored, in the shared store, so every
gateway process sees the same keys. When no key exists the API is open (a fresh install);
once one exists, every client must present one (app/auth.py checks them).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import Any

from fastapi import HTTPException

from cascade.store import Store

TABLE = "api_keys"
_CACHE_S = 5.0  # a revoked key stops working within this many seconds


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
