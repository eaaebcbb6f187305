"""Stores: embedded (one process, no Redis) or Redis (shared by many processes)."""

from __future__ import annotations

from typing import Any

from cascade.store.base import WINDOWS, Store
from cascade.store.memory import MemoryStore

__all__ = ["WINDOWS", "MemoryStore", "Store", "open_store"]


def open_store(settings: Any) -> Store:
    """Redis when ``settings.redis_url`` is set, else the embedded store under data_dir."""
    if settings.redis_url:
        from cascade.store.redis import RedisStore

        return RedisStore(
            settings.redis_url,
            settings.data_dir,
            socket_timeout_s=settings.redis_socket_timeout_s,
            prefix=settings.redis_prefix,
            demo_maxlen=settings.demo_stream_maxlen,
            cluster=settings.redis_cluster,
        )
    return MemoryStore(settings.data_dir)
