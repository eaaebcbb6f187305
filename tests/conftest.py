"""Shared fixtures: real models (SmolLM2 as the fast stand-in LM, MiniLM), a real llama.cpp
server on loopback, real Redis, and the ASGI app driven over httpx with its lifespan."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from bench.chaos_services import RedisProc
from cascade.backends import BackendPool
from cascade.config import Config, load_config
from cascade.llm_server import LocalLLMServer
from tests.redis_cluster import RedisClusterProcs

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("CASCADE_MODELS_DIR", ROOT / "models")).resolve()
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ARTIFACTS = ROOT / "test-artifacts"
ADMIN_TOKEN = "test-admin-token"


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [p for p in (MODELS / SMOL, MODELS / "all-MiniLM-L6-v2") if not p.exists()]
    if missing:
        raise pytest.UsageError(
            f"models missing: {[str(p) for p in missing]}; run `make install` "
            "(or `cascade-gateway models fetch`) first"
        )


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def smol_server() -> Iterator[LocalLLMServer]:
    """A real OpenAI-compatible llama.cpp server with SmolLM2, for `openai` levels."""
    with LocalLLMServer(MODELS / SMOL, alias="smol", n_threads=2, n_ctx=2048) as server:
        yield server


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:  # CI starts one; say so plainly if it is not there
        raise pytest.UsageError(f"tests need a Redis at {REDIS_URL}: {e}") from e
    yield client
    client.close()


@contextlib.contextmanager
def own_prefix(client: redis.Redis) -> Iterator[str]:
    """A fresh key prefix in the shared Redis; its keys are deleted afterwards."""
    prefix = f"cgtest-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    with own_prefix(redis_client) as prefix:
        yield prefix


@pytest.fixture(scope="module")
def module_redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix shared by one module's tests; its keys are deleted after the module."""
    with own_prefix(redis_client) as prefix:
        yield prefix


@pytest.fixture
def redis_settings(redis_prefix: str) -> dict[str, object]:
    """Settings for the shared Redis under this test's own prefix."""
    return {"REDIS_URL": REDIS_URL, "CASCADE_REDIS_PREFIX": redis_prefix}


STORES = ["embedded", "redis"]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Runs the test once per store: the embedded one, then Redis (``redis_prefix`` keys)."""
    return str(request.param)


@pytest.fixture
def store_settings(store_kind: str, redis_settings: dict[str, object]) -> dict[str, object]:
    """The settings that select ``store_kind``: none for the embedded store, else Redis."""
    return redis_settings if store_kind == "redis" else {}


TEST_CONFIG = """
backends:
  small:
    kind: llama
    model: {smol}
    n_ctx: 1024
    n_threads: 2
  large:
    kind: openai
    base_url: {large_url}
    model: smol
    timeout_s: {timeout}
    max_retries: 1
    backoff_s: 0.05
  minilm:
    kind: encoder
    model: all-MiniLM-L6-v2
defaults:
  request_timeout_s: {request_timeout}
  max_input_bytes: 2048
tasks:
  sentiment:
    kind: classify
    labels: [positive, negative]
    prompt:
      system: You are a sentiment classifier for movie reviews.
      user: "Review: {{input}}\\n\\nIs this review positive or negative? Answer with one word."
    levels:
      - {{name: logistic, kind: logistic, cost: 0.0001,
          policy: {{kind: threshold, threshold: 0.9}}}}
      - {{name: encoder, kind: encoder, backend: minilm, cost: 0.01,
          policy: {{kind: threshold, threshold: 0.9}}}}
      - {{name: small, kind: local_lm, backend: small, cost: 0.1,
          policy: {{kind: threshold, threshold: {small_threshold}}}}}
      - {{name: large, kind: openai, backend: large, cost: 1.0}}
  chat:
    kind: generate
    max_tokens: 16
    prompt:
      system: Answer the question in one sentence.
      user: "{{input}}"
    levels:
      - {{name: small, kind: local_lm, backend: small, cost: 0.1,
          policy: {{kind: threshold, threshold: {small_threshold}}}}}
      - {{name: large, kind: openai, backend: large, cost: 1.0}}
"""


def write_config(
    path: Path,
    large_url: str,
    small_threshold: float = 1.0,
    timeout: float = 20.0,
    request_timeout: float = 30.0,
) -> Path:
    """The test configuration: SmolLM2 in-process as the small LM and over HTTP as the large.

    ``small_threshold`` 1.0 makes every request reach the large LM (a demonstration each).
    """
    path.write_text(
        TEST_CONFIG.format(
            smol=MODELS / SMOL,
            large_url=large_url,
            small_threshold=small_threshold,
            timeout=timeout,
            request_timeout=request_timeout,
        )
    )
    return path


@pytest.fixture
def config_path(tmp_path: Path, smol_server: LocalLLMServer) -> Path:
    return write_config(tmp_path / "config.yaml", smol_server.base_url)


def make_settings(tmp_path: Path, config: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "CASCADE_CONFIG": config,
        "CASCADE_MODELS_DIR": MODELS,
        "CASCADE_DATA_DIR": tmp_path / "data",
        "CASCADE_VERSION_POLL_S": 0.2,
        "CASCADE_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_backends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The test configuration's in-process models (SmolLM2 ``small``, MiniLM ``minilm``), loaded
    once per session: app instances built with ``make_pool`` share them instead of loading
    (and scanning SmolLM2's vocabulary) again. The large LM stays per configuration."""
    path = write_config(tmp_path_factory.mktemp("shared") / "config.yaml", "http://127.0.0.1:9/v1")
    pool = BackendPool(load_config(path), MODELS)
    return {"small": pool.llama("small"), "minilm": pool.encoder("minilm")}


def make_pool(config: Config, shared: dict[str, object]) -> BackendPool:
    """A backend pool for ``config`` that reuses the session's in-process models."""
    return BackendPool(config, MODELS, preloaded=shared)


def build_app(settings: Settings, shared: dict[str, object] | None = None) -> FastAPI:
    """The real app over ``settings``' configuration; with ``shared``, on the session's models."""
    config = load_config(settings.config_path)
    return create_app(settings, config, make_pool(config, shared) if shared is not None else None)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, shared: dict[str, object] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with its lifespan (store, models, learner), over httpx's ASGI transport."""
    app = build_app(settings, shared)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # the admin token rides in its own header, so Authorization stays free for API keys
        headers = {"x-admin-token": settings.admin_token} if settings.admin_token else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=60, headers=headers
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


class RedisServer(RedisProc):
    """A private redis-server on its own port (AOF, fsync always, as a production Redis would
    be configured), for tests that stop and restart Redis."""

    start_timeout_s = 20.0

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise pytest.UsageError("redis-server is not installed (CI installs it with apt)")
        super().start()
        return self


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A real Redis Cluster (3 masters + 3 replicas) on loopback, for the session."""
    if shutil.which("redis-server") is None:
        raise pytest.UsageError("redis-server is not installed (CI installs it with apt)")
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
