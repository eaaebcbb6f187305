"""bench/hotpath.py: CPU per cache hit, the gateway and the floor each driven in-process."""

from __future__ import annotations

import pytest
import redis

from bench.hotpath import measure
from bench.load import prepare
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.slow  # times hundreds of cache hits, gateway and floor


def test_hotpath_times_real_cache_hits_of_the_gateway_and_the_floor(
    redis_client: redis.Redis,
) -> None:
    env = prepare(REDIS_URL)
    try:
        # the driver fails unless every app answers 200 with the cached label
        gateway = measure("gateway", env, n=200, rounds=1)
        floor = measure("floor", env, n=200, rounds=1)
        assert gateway["cpu_us"] > 0 and floor["cpu_us"] > 0
        cached = redis_client.scan_iter(f"{env['CASCADE_REDIS_PREFIX']}*cache:*")
        assert any(True for _ in cached), "the gateway's answer was never cached"
    finally:
        prefix = env["CASCADE_REDIS_PREFIX"]
        for k in [
            *redis_client.scan_iter(f"{prefix}*"),
            b"floor:bench:a warm, funny, wonderful film",
        ]:
            redis_client.delete(k)
