"""The gateway served for real: uvicorn on a free loopback port, in a thread of this process.

For clients that need a socket (the ``openai`` client, a browser, the SSE framing as bytes on
the wire). The app is the real one with its lifespan; the in-process models are the session's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from app.main import create_app
from app.settings import Settings
from cascade.config import load_config
from cascade.llm_server import free_port
from tests.api_helpers import _config_file
from tests.conftest import make_pool, make_settings


@dataclass
class Live:
    url: str
    settings: Settings
    app: Any


@contextlib.contextmanager
def serve_app(
    settings: Settings, shared: dict[str, object], startup_timeout_s: float = 120.0
) -> Iterator[Live]:
    config = load_config(settings.config_path)
    app = create_app(settings, config, make_pool(config, shared))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def live_gateway(
    root: Path,
    shared: dict[str, object],
    large_url: str,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    settings: dict[str, object] | None = None,
    **config_kw: Any,
) -> Iterator[Live]:
    """Like ``tests.api_helpers.gateway`` (learner off), served over real HTTP."""
    path = _config_file(root, large_url, edit, config_kw)
    overrides: dict[str, object] = {"CASCADE_LEARNER": False}
    if redis_url is not None:
        overrides.update(REDIS_URL=redis_url, CASCADE_REDIS_PREFIX=prefix or "cg")
    overrides.update(settings or {})
    with serve_app(make_settings(root, path, **overrides), shared) as live:
        yield live
