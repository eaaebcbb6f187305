"""`bench semcache`'s systems on a small stream of near-repeats, through the real cascade with
MiniLM and SmolLM2 (behind llama.cpp's server) as the large LM."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.semcache import (
    MemoEmbedder,
    SemcacheArgs,
    other_orders,
    run_system,
    summarise,
    systems,
    with_fast_encoder,
)
from bench.semcache_checks import dominates, target_checks
from bench.semcache_report import _orders_table
from bench.streams import Item, Stream
from cascade.backends import BackendPool
from cascade.config import load_config
from cascade.llm_server import LocalLLMServer
from tests.conftest import MODELS, write_config

TEXTS = [
    "a warm film",
    "the plot of this documentary covers tax law in detail",
    "A warm film!",
    "a warm film.",
    "The plot of this documentary covers tax law in detail.",
    "a warm film",
]


async def test_systems_rank_as_their_thresholds_say(
    tmp_path: Path, smol_server: LocalLLMServer
) -> None:
    config = load_config(write_config(tmp_path / "config.yaml", smol_server.base_url))
    config = with_fast_encoder(config)
    template = config.tasks["sentiment"]
    template = template.model_copy(update={"levels": [template.levels[-1]]})
    pool = BackendPool(
        config, MODELS, wrap=lambda kind, b: MemoEmbedder(b) if kind == "encoder" else b
    )
    stream = Stream(
        "near", [Item(t, None) for t in TEXTS], ["positive", "negative"], template.prompt
    )
    args = SemcacheArgs(thresholds=(0.8,), targets=(0.95,), timing=False, write_doc=False)
    rows, labels = {}, None
    for sys_ in systems(args):
        outs, run_s, report = await run_system(sys_, config, template, pool, stream, sys_.name)
        labels = labels or [o.label for o in outs]
        rows[f"{sys_.name}{sys_.row.get('threshold', '')}{sys_.row.get('encoder', '')}"] = (
            summarise(sys_, outs, labels, run_s, 0.5, 0.01) | {"gate": report}
        )
    assert set(rows) == {"no_cache", "exact", "fixed0.8", "verified", "verifiedminilm-int8"}
    assert rows["no_cache"]["hit_rate"] == 0 and rows["no_cache"]["llm_share"] == 1
    assert rows["exact"]["exact_hits"] == 1 and rows["exact"]["semantic_hits"] == 0
    fixed = rows["fixed0.8"]
    assert fixed["semantic_hits"] >= 2 and fixed["min_similarity_served"] >= 0.8
    assert fixed["hits"] == fixed["semantic_hits"] + fixed["exact_hits"]
    assert fixed["llm_share"] == pytest.approx(1 - fixed["hit_rate"], abs=1e-3)
    assert fixed["wall_s"] < rows["no_cache"]["wall_s"]  # fewer large-LM calls at 0.5 s each
    # the verified cache has seen too few comparisons to serve a semantic hit
    verified = rows["verified"]
    assert verified["semantic_hits"] == 0 and verified["gate"]["threshold"] is None
    assert rows["verifiedminilm-int8"]["exact_hits"] == 1
    checks = target_checks(list(rows.values()), [])
    assert checks["error_within_bound"] == {
        "verified 0.95": True,
        "verified 0.95 minilm-int8": True,
    }
    assert checks["hits_over_exact"]["verified 0.95"] == 1.0  # the exact hit only
    assert checks["dominated_by"] == {"fixed 0.8": []}  # fewer hits, both without errors
    # the caches again on two reshuffles of the same requests, the exact cache left out
    orders = await other_orders(
        SemcacheArgs(thresholds=(0.8,), targets=(0.95,), orders=2),
        config,
        template,
        pool,
        stream,
        0.5,
        0.01,
    )
    assert [(r["order"], r["system"]) for r in orders] == [
        (1, "fixed"),
        (1, "verified"),
        (1, "verified"),
        (2, "fixed"),
        (2, "verified"),
        (2, "verified"),
    ]
    assert all(r["hits"] >= 1 for r in orders)  # the repeated text is an exact hit in any order
    later = target_checks(list(rows.values()), orders)
    assert set(later["error_within_bound_order_2"]) == {
        "verified 0.95",
        "verified 0.95 minilm-int8",
    }
    assert set(later["dominated_by_order_1"]) == {"fixed 0.8"}
    table = _orders_table({"orders": orders})
    assert "| fixed cosine 0.8 |" in table and "order 2" in table and "mean" in table


def test_dominance_is_more_hits_at_no_more_error_or_less_error_at_no_fewer_hits() -> None:
    def r(hits: int, err: float) -> dict:
        return {"hits": hits, "error_rate": err}

    assert dominates(r(300, 0.03), r(200, 0.05))
    assert dominates(r(300, 0.05), r(200, 0.05)) and dominates(r(200, 0.04), r(200, 0.05))
    assert not dominates(r(322, 0.031), r(380, 0.10))  # fewer hits
    assert not dominates(r(322, 0.031), r(164, 0.030))  # more error
    assert not dominates(r(200, 0.05), r(200, 0.05))  # a tie is not better
