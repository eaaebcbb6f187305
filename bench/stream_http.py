"""``bench stream --url``: drive a running gateway over HTTP instead of an in-process cascade.

The gateway answers each item in order with its own levels, learner and store (``cache: false``
so every item is answered, not replayed), exactly as clients would see it. Only the system
that gateway runs can be measured this way: the baselines need the in-process harness.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import numpy as np

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
    correct = 0
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
            share = float(np.mean([res.llm_called for res in results]))
            prog.update(i, acc=correct / i, llm_share=share)
    return results


def summarise_http(results: list[ItemResult], stream: Stream, url: str) -> dict[str, Any]:
    """Accuracy, large-LM share and cost of the gateway's run; agreement needs the large LM's
    label for every item, so it is left out (the gateway reports it per level itself)."""
    n = len(results)
    answered: dict[str, int] = {}
    for r in results:
        answered[r.level] = answered.get(r.level, 0) + 1
    return {
        "system": "gateway",
        "url": url,
        "accuracy": round(
            float(
                np.mean([r.label == it.label for r, it in zip(results, stream.items, strict=True)])
            ),
            4,
        ),
        "agreement": None,
        "llm_share": round(float(np.mean([r.llm_called for r in results])), 4),
        "cost": round(float(sum(r.cost for r in results)), 3),
        "cost_ratio": round(float(sum(r.cost for r in results)) / n, 4),
        "answered_by": {k: round(v / n, 4) for k, v in sorted(answered.items())},
        "errors": sum(r.error is not None for r in results),
    }
