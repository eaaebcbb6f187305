"""``bench stream --url``: drive a running gateway over HTTP instead of an in-process cascade.

The gateway answers each item in order with its own levels, learner and store (``cache: false``
so every item is answered, not replayed), exactly as clients would see it. Only the system
that gateway runs can be measured this way: the baselines need the in-process harness.
"""

from __future__ import annotations

import os

import httpx

from bench.harness import ItemResult, Progress
from bench.streams import Stream


async def run_stream_http(
    url: str, task: str, stream: Stream, large: str = "large", api_key: str | None = None
) -> list[ItemResult]:
    """POST every item to ``url``/generate in order; a non-200 answer is an error, counted."""
    key = api_key or os.environ.get("CASCADE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    results: list[ItemResult] = []
    prog = Progress(f"gateway {url}", len(stream.items), 50)
    correct = called = 0
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=600) as c:
        for i, item in enumerate(stream.items, start=1):
            r = await c.post("/generate", json={"task": task, "input": item.text, "cache": False})
            if r.status_code != 200:
                results.append(ItemResult(None, "error", True, 0.0, [], error=r.text[:200]))
            else:
                b = r.json()
                ran = [lv["name"] for lv in b["levels"]]
                results.append(
                    ItemResult(b["label"], b["level"], large in ran, b["cost"], ran, b["degraded"])
                )
                correct += b["label"] == item.label
            called += results[-1].llm_called
            prog.update(i, acc=correct / i, llm_share=called / i)
    return results
