"""The semantic cache end to end: real app, real store (embedded and Redis), MiniLM embeddings,
SmolLM2 behind llama.cpp's server as the large LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cascade.llm_server import LocalLLMServer
from tests.api_helpers import gateway, task_stats, wait_for_stats

TASK = "sentiment"
FIRST = "a warm film"
NEAR = "A warm film!"  # another byte string (an exact-cache miss), the same request in effect
FAR = "the plot of this documentary covers tax law in detail"


def semantic(**cfg: Any) -> Any:
    """Config edit: the sentiment task answered by the large LM alone, with a semantic cache."""

    def edit(data: dict[str, Any]) -> None:
        task = data["tasks"][TASK]
        task["levels"] = [task["levels"][-1]]
        task["semantic_cache"] = {"encoder": "minilm", **cfg}

    return edit


async def ask(client: Any, text: str, **kw: Any) -> dict[str, Any]:
    r = await client.post("/generate", json={"task": TASK, "input": text, **kw})
    assert r.status_code == 200, r.text
    return {**r.json(), "_headers": dict(r.headers)}


async def test_a_fixed_threshold_serves_near_repeats(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    edit = semantic(fixed_threshold=0.8)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        first = await ask(client, FIRST)
        assert first["cached"] is False and first["cache"] is None and first["level"] == "large"
        near = await ask(client, NEAR)
        assert near["cached"] is True and near["cache"] == "semantic"
        assert near["similarity"] >= 0.8 and near["cost"] == 0.0
        assert (near["label"], near["output"]) == (first["label"], first["output"])
        assert near["_headers"]["x-cascade-cache"] == "semantic"
        assert float(near["_headers"]["x-cascade-similarity"]) == pytest.approx(
            near["similarity"], abs=1e-4
        )
        exact = await ask(client, FIRST)
        assert exact["cache"] == "exact" and "x-cascade-similarity" not in exact["_headers"]
        far = await ask(client, FAR)
        assert far["cached"] is False and far["level"] == "large"
        stats = await wait_for_stats(client, TASK, lambda t: t["semantic_cache"]["hits"] >= 1)
        sem = stats["semantic_cache"]
        assert sem["hits"] == 1 and sem["cost_saved"] == pytest.approx(1.0)
        assert sem["gate"]["fixed_threshold"] == 0.8 and sem["gate"]["entries"] == 2
        assert stats["cache_hits"] == 2
        metrics = (await client.get("/metrics")).text
        assert 'cascade_semantic_hits_total{task="sentiment"} 1.0' in metrics


async def test_the_learned_gate_serves_only_once_agreement_is_shown(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    """Until enough comparisons show the target, near-repeats go to the large LM (each one a
    comparison); then they are hits, and a share of would-be hits is still checked."""
    edit = semantic(target_agreement=0.6, min_samples=3, z=0.5, verify_share=0.0)
    variants = [FIRST, NEAR, "a warm film.", "A WARM FILM", "a warm film!!", "a warm, warm film"]
    async with gateway(tmp_path, shared_backends, smol_server.base_url, edit=edit) as client:
        answers = [await ask(client, v) for v in variants]
        served = [a for a in answers if a["cache"] == "semantic"]
        first_hit = next(i for i, a in enumerate(answers) if a["cache"] == "semantic")
        assert first_hit >= 4  # at least three comparisons before any hit
        assert all(a["label"] == answers[0]["label"] for a in served)
        stats = await task_stats(client, TASK)
        gate = stats["semantic_cache"]["gate"]
        assert gate["threshold"] is not None and gate["comparisons"] >= 3
        assert gate["agreement_ci95"][0] <= gate["agreement_at_threshold"] <= 1.0
