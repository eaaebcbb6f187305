from __future__ import annotations

from pathlib import Path

from tests.conftest import make_settings, running_app


async def test_sentiment_end_to_end(tmp_path: Path, config_path: Path, redis_prefix: str) -> None:
    settings = make_settings(
        tmp_path,
        config_path,
        REDIS_URL="redis://127.0.0.1:6379/0",
        CASCADE_REDIS_PREFIX=redis_prefix,
    )
    async with running_app(settings) as client:
        r = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["level"] == "large"
        r2 = await client.post("/generate", json={"task": "sentiment", "input": "a warm film"})
        assert r2.json()["cached"] is True
        stats = (await client.get("/admin/stats")).json()
        assert stats["tasks"]["sentiment"]["requests"] == 2
