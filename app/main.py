"""The FastAPI application factory and its lifespan (store, cascade, background tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI

from app import errors
from app.middleware import BodyLimit, JSONBodyDefault
from app.settings import Settings, get_settings
from cascade.backends import BackendPool
from cascade.config import Config, load_config
from cascade.runner import Cascade
from cascade.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything a request handler needs, built once per process."""

    settings: Settings
    config: Config
    store: Store
    cascade: Cascade
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    learner: object | None = None


async def _poll_versions(gw: Gateway) -> None:
    """Hot reload: pick up versions the learner publishes, without a restart."""
    while True:
        try:
            loaded = await gw.cascade.refresh_versions()
            for task, v in loaded.items():
                log.info("task %s now serves learned version %d", task, v)
        except Exception:
            log.exception("version refresh failed")
        await asyncio.sleep(gw.settings.version_poll_s)


def create_app(
    settings: Settings | None = None,
    config: Config | None = None,
    pool: BackendPool | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    cfg = config or load_config(settings.config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        await store.start()
        backends = pool or BackendPool(cfg, settings.models_dir)
        cascade = Cascade(cfg, backends, store)
        gw = Gateway(settings, cfg, store, cascade)
        await cascade.warmup()
        await cascade.refresh_versions()
        gw.tasks.append(asyncio.create_task(_poll_versions(gw), name="version-poller"))
        if settings.learner:
            from cascade.learner import Learner

            gw.learner = Learner(cfg, backends, store)
            gw.tasks.append(asyncio.create_task(gw.learner.run(), name="learner"))
        app.state.gateway = gw
        try:
            yield
        finally:
            for t in gw.tasks:
                t.cancel()
            for t in gw.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await cascade.aclose()
            await store.close()

    app = FastAPI(
        title="cascade-gateway",
        version="0.1.0",
        description=(
            "An LLM gateway that answers each request with the cheapest model that can, "
            "and learns online from the large LM's answers which requests need it."
        ),
        lifespan=lifespan,
    )
    errors.install(app)
    limit = cfg.defaults.max_input_bytes
    app.add_middleware(BodyLimit, max_bytes=8 * limit + 65_536, input_limit=limit)
    app.add_middleware(JSONBodyDefault)
    from app.routes import admin, feedback, generate, health

    app.include_router(health.router)
    app.include_router(generate.router)
    app.include_router(feedback.router)
    app.include_router(admin.router)
    return app
