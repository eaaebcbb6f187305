"""The per-process gateway: what every request handler needs, and the loops that keep it current.

Built once per process by the app's lifespan (app/main.py), reached by handlers through
``request.app.state.gateway`` or the ``app.deps.gateway`` dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.keys import KeyCache
from app.metrics import Metrics
from app.settings import Settings
from cascade.aio import stop_if_cancelled
from cascade.backends import BackendPool
from cascade.backends.base import set_model_nice
from cascade.config import Config
from cascade.runner import Cascade
from cascade.store import Store, open_store

if TYPE_CHECKING:
    from cascade.learner import Learner

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything a request handler needs, built once per process."""

    settings: Settings
    config: Config
    store: Store
    cascade: Cascade
    keys: KeyCache = field(default_factory=KeyCache)
    metrics: Metrics = field(default_factory=Metrics)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    learner: Learner | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    async def open(
        cls, settings: Settings, config: Config, pool: BackendPool | None = None
    ) -> Gateway:
        """Open the store, warm the cascade, start the background loops (and the learner)."""
        set_model_nice(settings.model_nice)
        store = open_store(settings)
        await store.start()
        backends = pool or BackendPool(config, settings.models_dir)
        gw = cls(settings, config, store, Cascade(config, backends, store))
        with contextlib.suppress(Exception):  # the store is away: the first request tries
            await gw.keys.any_keys(store)
        gw.cascade.observers.append(gw.metrics.observe)
        await gw.cascade.warmup()
        await gw.cascade.refresh()
        gw._spawn(gw._poll_versions(), "version-poller")
        gw._spawn(gw._gauges(), "gauges")
        if settings.learner:
            # imported here: the learner brings torch (policies.ocl, ~2 s to import), which a
            # serve-only worker (CASCADE_LEARNER=false) does without
            from cascade.learner import Learner

            gw.learner = Learner(config, backends, store, lease_s=settings.learner_lease_s)
            gw._spawn(gw.learner.run(), "learner")
        return gw

    async def aclose(self) -> None:
        """Stop the background loops, then the cascade and the store."""
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.cascade.aclose()
        await self.store.close()

    def _spawn(self, loop: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.create_task(loop, name=name))

    async def _poll_versions(self) -> None:
        """Hot reload: pick up versions the learner publishes, without a restart."""
        while True:
            try:
                loaded = await self.cascade.refresh()
                for task, v in loaded.items():
                    log.info("task %s now serves learned version %d", task, v)
            except Exception:
                log.exception("version refresh failed")
            stop_if_cancelled()
            await asyncio.sleep(self.settings.version_poll_s)

    async def _gauges(self, every_s: float = 2.0) -> None:
        """Metrics that are states, not events: learner lag, version, store health."""
        m, store = self.metrics, self.store
        while True:
            for name, rt in self.cascade.tasks.items():
                m.version.labels(name).set(rt.version)
                try:
                    m.learner_lag.labels(name).set(await store.demo_lag(name))
                except Exception:
                    store.errors += 1
            m.sync_store_errors(store.errors)
            m.demos_buffered.set(store.demos_buffered)
            m.demos_dropped.set(store.demos_dropped)
            stop_if_cancelled()
            await asyncio.sleep(every_s)
