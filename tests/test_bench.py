"""`bench stream --url`: a labelled stream driven over real HTTP through a running gateway."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bench.stream import StreamBenchArgs, stream_bench
from cascade.llm_server import LocalLLMServer
from tests.api_helpers import live_gateway

REVIEWS = [
    ("a brilliant and beautiful film with great music", "positive"),
    ("awful, boring, terrible script", "negative"),
    ("a brilliant and beautiful film with great cast", "positive"),
    ("awful, boring, terrible plot", "negative"),
    ("a brilliant and beautiful film with great humor", "positive"),
    ("awful, boring, terrible editing", "negative"),
]


@pytest.mark.slow  # a bench run against a served gateway
async def test_stream_bench_drives_a_running_gateway(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(REVIEWS)
    out = tmp_path / "out.json"
    with live_gateway(tmp_path / "gw", shared_backends, smol_server.base_url) as live:
        args = StreamBenchArgs(
            stream=None,
            file=data,
            labels=["positive", "negative"],
            prompt="Review: {input}\n\nIs this review positive or negative?",
            limit=None,
            url=live.url,
            out=out,
            write_doc=False,
        )
        payload = await stream_bench(args)
        gw = live.app.state.gateway
        await gw.store.flush_counters()
        stats = await gw.store.read_counters("sentiment")
    assert json.loads(out.read_text()) == payload
    assert payload["items"] == len(REVIEWS)
    (run,) = payload["runs"]
    assert run["system"] == "gateway" and run["url"] == live.url
    # every item reached the gateway, in order, and was answered or counted as an error
    assert stats["requests"] == len(REVIEWS)
    answered = round(sum(run["answered_by"].values()) * len(REVIEWS))
    assert answered == len(REVIEWS)
    assert run["answered_by"].get("error", 0) * len(REVIEWS) == run["errors"]
    assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["llm_share"] <= 1.0
    assert abs(run["cost_ratio"] * len(REVIEWS) - run["cost"]) < 1e-2
    # the share per tenth of the stream, weighted by the slices' sizes, is the run's share
    tenths = np.array_split(np.arange(len(REVIEWS)), 10)
    assert len(run["share_by_tenth"]) == min(10, len(REVIEWS))
    weighted = sum(s * len(t) for s, t in zip(run["share_by_tenth"], tenths, strict=False))
    assert abs(weighted / len(REVIEWS) - run["llm_share"]) < 1e-3
    weighted = sum(a * len(t) for a, t in zip(run["accuracy_by_tenth"], tenths, strict=False))
    assert abs(weighted / len(REVIEWS) - run["accuracy"]) < 1e-3


def test_order_seed_replays_the_same_items_in_another_order(tmp_path: Path) -> None:
    from bench.stream import load_stream

    data = tmp_path / "reviews.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((f"{text} {i}", label) for i in range(5) for text, label in REVIEWS)

    def texts(order_seed: int | None) -> list[str]:
        args = StreamBenchArgs(stream=None, file=data, labels=["positive", "negative"], limit=20)
        args.order_seed = order_seed
        return [it.text for it in load_stream(args, tmp_path).items]

    base = texts(None)
    again, other = texts(1), texts(2)
    # the --seed/--limit selection is kept (so its recorded large-LM answers replay) ...
    assert sorted(again) == sorted(base) == sorted(other) and len(base) == 20
    # ... in an order of its own, the same every time it is asked for
    assert again != base and other != again and texts(1) == again
