"""Process settings from the environment (12-factor); the task configuration is a YAML file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every field can be set by its environment variable (upper case, no prefix).

    ``redis_url`` unset means the embedded store (one process, files under ``data_dir``).
    ``llm_base_url`` unset means ``serve`` starts llama.cpp's server on loopback.
    """

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    config_path: Path | None = Field(None, alias="CASCADE_CONFIG")
    models_dir: Path = Field(Path("models"), alias="CASCADE_MODELS_DIR")
    data_dir: Path = Field(Path("data"), alias="CASCADE_DATA_DIR")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    # REDIS_URL names one node of a Redis Cluster (redis-py's RedisCluster finds the rest);
    # a redis+cluster:// URL says the same without this flag
    redis_cluster: bool = Field(False, alias="REDIS_CLUSTER")
    redis_prefix: str = Field("cg", alias="CASCADE_REDIS_PREFIX", pattern=r"^[A-Za-z0-9_\-]+$")
    redis_socket_timeout_s: float = Field(0.1, alias="REDIS_SOCKET_TIMEOUT_S", gt=0)
    llm_base_url: str | None = Field(None, alias="LLM_BASE_URL")
    llm_model: str | None = Field(None, alias="LLM_MODEL")
    admin_token: str | None = Field(None, alias="CASCADE_ADMIN_TOKEN")
    learner: bool = Field(True, alias="CASCADE_LEARNER")
    # a learner process holds each task it learns for this long and renews it while alive: a
    # dead learner's tasks go to the others after at most this long
    learner_lease_s: float = Field(10.0, alias="CASCADE_LEARNER_LEASE_S", gt=0)
    version_poll_s: float = Field(1.0, alias="CASCADE_VERSION_POLL_S", gt=0)
    demo_stream_maxlen: int = Field(200_000, alias="CASCADE_DEMO_STREAM_MAXLEN", ge=1000)
    # in-process models run this far (0-19) below the thread that serves requests: on a busy
    # machine a cache hit is not kept waiting behind a model's token loop
    model_nice: int = Field(10, alias="CASCADE_MODEL_NICE", ge=0, le=19)
    log_level: str = Field("info", alias="LOG_LEVEL")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
