"""``bench semcache-sim``: the semantic cache's gate on many orders of the tweet traffic, fast.

``bench semcache`` runs every request through a real cascade (about a minute per system and
order here), so it checks three further orders. A learned gate's early evidence depends on
which near-repeat comes first, and three orders hid what ten show. This replays the same
stream, with the large LM's recorded answers, through the gateway's own ``LearnedGate`` (and
``FixedGate``) with what the cache does around it, in seconds per order: exact repeats are
exact hits; a lookup reads the 8 nearest entries by cosine over MiniLM embeddings (brute
force, where the index's HNSW search is approximate); a served hit is logged unverified; a miss or a
verification is compared and its answer becomes an entry unless it repeats its neighbour
(``cascade.semantic.SAME``), replacing an entry at the same words (``SAME_VECTOR``). Order 0
is ``bench semcache``'s own order, so its figures can be checked against that bench's.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.flags import arg
from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section
from bench.semcache_checks import dominates, error_bound, within_bound


@dataclass
class SemcacheSimArgs:
    """``bench semcache-sim``'s arguments; each is also its flag."""

    orders: int = arg(10, "orders of the stream: 0 (bench semcache's) to N-1")
    seed: int = arg(42)
    targets: tuple[float, ...] = arg(
        (0.9, 0.95, 0.97, 0.99), "target agreements of the learned gate"
    )
    thresholds: tuple[float, ...] = arg((0.8, 0.9, 0.95, 0.98), "fixed cosine thresholds")
    residual_priors: tuple[float, ...] = arg(
        (100.0, 0.0), "the learned gate's residual_prior, each a variant (100: the default)"
    )
    workers: int = arg(2, "orders replayed at once, one process each")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    out: Path | None = arg(Path("bench/results/semcache-sim.json"), "write the JSON here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


@dataclass
class Traffic:
    """The stream as the gate sees it: text, the large LM's label and confidence, embedding."""

    texts: list[str]
    labels: list[str | None]
    records: list[float | None]
    vectors: np.ndarray


async def traffic(args: SemcacheSimArgs) -> Traffic:
    """The tweets in ``bench semcache``'s order, answered by the large LM (recorded answers
    only: a missing one is an error, run ``bench semcache`` first) and embedded once."""
    import os

    from app.settings import Settings
    from bench.harness import ANNOTATIONS, load_bench_config
    from bench.semcache import ENCODER, System, _large_only, _pool, run_system, with_fast_encoder
    from bench.stream import _large_model, _missing_answers
    from bench.streams import tweet_traffic
    from cascade.config import load_config
    from cascade.replay import ReplayFile

    settings = Settings()
    stream = tweet_traffic(settings.models_dir, args.seed, None)
    path = args.config or settings.config_path
    base = load_config(path)
    template = stream.task_config(base.tasks["sentiment"])
    replay = ReplayFile(ANNOTATIONS, write_name=f"{stream.name}.{_large_model(base, template)}")
    missing = _missing_answers(base, template, stream, replay)
    if missing:
        raise SystemExit(f"{missing} large-LM answers are not recorded: run `bench semcache`")
    os.environ.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")  # all recorded: never called
    config = with_fast_encoder(load_bench_config(path))  # the pool builds both encoders
    pool, encoders = _pool(config, settings.models_dir, replay)
    no_cache = System("no_cache", None, use_cache=False)
    large_only = _large_only(stream, config, "sentiment")
    outs, _, _ = await run_system(no_cache, config, large_only, pool, stream, "large LM answers")
    labels = [o.label for o in outs]
    records = [o.levels[-1].confidence if o.levels else None for o in outs]
    texts = [it.text for it in stream.items]
    vectors = np.asarray(encoders[ENCODER].embed(texts), dtype=np.float32)
    return Traffic(texts, labels, records, vectors)


def replay(t: Traffic, order: int, gate: Any, draw_seed: int = 0) -> dict[str, Any]:
    """One order through one gate: hits (exact and semantic) and their error rate."""
    from cascade.semantic import SAME
    from cascade.semcache import SAME_VECTOR
    from policies.semantic import NEIGHBOURS, neighbour_features

    idx = list(range(len(t.texts)))
    if order:
        random.Random(order).shuffle(idx)  # as bench semcache's further orders
    rng = np.random.default_rng(draw_seed)
    entries = np.zeros_like(t.vectors)
    e_labels: list[str | None] = []
    e_records: list[float | None] = []
    exact: dict[str, str | None] = {}
    hits = wrong = semantic = 0
    for i in idx:
        text, truth = t.texts[i], t.labels[i]
        if text in exact:
            hits, wrong = hits + 1, wrong + (exact[text] != truth)
            continue
        n = len(e_labels)
        if n:
            sims = entries[:n] @ t.vectors[i]
            top = np.argsort(-sims)[:NEIGHBOURS]
            x = neighbour_features(
                [float(sims[j]) for j in top],
                [e_labels[j] for j in top],
                [e_records[j] for j in top],
                len(text),
                2,
            )
            d = gate.decide(x, rng.random())
            near = e_labels[top[0]]
            if d.serve:
                hits, wrong, semantic = hits + 1, wrong + (near != truth), semantic + 1
                gate.observe(x, None)
                continue
            agreed = near == truth
            if x[0] >= gate.floor:
                gate.observe(x, agreed)
            if sims[top[0]] >= SAME and agreed:
                exact[text] = truth
                continue
        exact[text] = truth
        if n and sims[top[0]] >= SAME_VECTOR:  # the newer answer replaces the older entry
            j = int(top[0])
            entries[j], e_labels[j], e_records[j] = t.vectors[i], truth, t.records[i]
            continue
        entries[n] = t.vectors[i]
        e_labels.append(truth)
        e_records.append(t.records[i])
    return {
        "hits": hits,
        "semantic_hits": semantic,
        "error_rate": round(wrong / hits, 4) if hits else 0.0,
    }


def systems(args: SemcacheSimArgs) -> list[tuple[dict[str, Any], Any]]:
    """(row, a factory of a fresh gate) per system."""
    from policies.semantic import FixedGate, LearnedGate

    out: list[tuple[dict[str, Any], Any]] = [
        ({"system": "fixed", "threshold": th}, lambda th=th: FixedGate(th))
        for th in args.thresholds
    ]
    for m in args.residual_priors:
        for tg in args.targets:
            row = {"system": "verified", "target_agreement": tg, "residual_prior": m}
            out.append((row, lambda tg=tg, m=m: LearnedGate(target=tg, residual_prior=m)))
    return out


def label(row: dict[str, Any]) -> str:
    if row["system"] == "fixed":
        return f"fixed {row['threshold']}"
    return f"verified {row['target_agreement']} (residual_prior {row['residual_prior']:g})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system over the orders: hits (min, mean, max), the worst error, the orders whose
    error passes 1 - target + 0.01, and the orders on which it dominates each fixed gate
    (more hits at no higher error, or a lower error at no fewer hits)."""
    fixed = {r["threshold"]: {} for r in runs if r["system"] == "fixed"}
    for r in runs:
        if r["system"] == "fixed":
            fixed[r["threshold"]][r["order"]] = r
    out = []
    for key in dict.fromkeys(label(r) for r in runs):
        mine = [r for r in runs if label(r) == key]
        hits = [r["hits"] for r in mine]
        row: dict[str, Any] = {
            "system": key,
            "hits_min": min(hits),
            "hits_mean": round(float(np.mean(hits)), 1),
            "hits_max": max(hits),
            "error_max": max(r["error_rate"] for r in mine),
        }
        if mine[0]["system"] == "verified":
            row["orders_over_bound"] = [r["order"] for r in mine if not within_bound(r)]
            for th, by_order in fixed.items():
                row[f"dominates_fixed_{th}"] = sum(dominates(r, by_order[r["order"]]) for r in mine)
        out.append(row)
    return out


def frontier(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per residual_prior and fixed threshold: the orders on which some target of the learned
    gate, within its own error bound, dominates the fixed gate (an operator picks the target;
    a peer's threshold is beaten when one target beats it)."""
    out = []
    for m in dict.fromkeys(r["residual_prior"] for r in runs if r["system"] == "verified"):
        for th in dict.fromkeys(r["threshold"] for r in runs if r["system"] == "fixed"):
            beaten, by = [], []
            for k in sorted({r["order"] for r in runs}):
                f = next(r for r in runs if r["order"] == k and r.get("threshold") == th)
                wins = [
                    r["target_agreement"]
                    for r in runs
                    if r["order"] == k
                    and r.get("residual_prior") == m
                    and within_bound(r)
                    and dominates(r, f)
                ]
                if wins:
                    beaten.append(k)
                    by.append(wins)
            out.append({"residual_prior": m, "threshold": th, "orders_beaten": beaten, "by": by})
    return out


_TRAFFIC: Traffic | None = None  # a worker's copy, sent once


def _init(t: Traffic) -> None:
    from threadpoolctl import threadpool_limits

    global _TRAFFIC
    _TRAFFIC = t
    threadpool_limits(1)  # one core per worker: BLAS threads would fight the other workers


def _order(job: tuple[SemcacheSimArgs, int]) -> list[dict[str, Any]]:
    """Every system on one order (in a worker)."""
    args, order = job
    assert _TRAFFIC is not None
    return [
        {"order": order, **row, **replay(_TRAFFIC, order, make())} for row, make in systems(args)
    ]


async def semcache_sim(args: SemcacheSimArgs) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    t = await traffic(args)
    print(f"semcache-sim: {len(t.texts)} requests ready in {time.perf_counter() - t0:.0f} s")
    runs: list[dict[str, Any]] = []
    jobs = [(args, k) for k in range(args.orders)]
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(t,)) as ex:
        for done, rows in enumerate(ex.map(_order, jobs), 1):
            runs.extend(rows)
            for r in rows:
                print(r, flush=True)
            print(f"[semcache-sim] {done}/{len(jobs)} orders", flush=True)
    payload = {
        "stream": "disaster-tweets (duplicates kept)",
        "items": len(t.texts),
        "seed": args.seed,
        "orders": args.orders,
        "runs": runs,
        "summary": summarise(runs),
        "frontier": frontier(runs),
    }
    if args.out is not None:
        from bench.stream import write_json

        write_json(args.out, payload)
    if args.write_doc:
        write_report(payload)
    return payload


def plot(payload: dict[str, Any]) -> str:
    fig, ax = new_figure(figsize=(7.5, 4.5))
    keys = list(dict.fromkeys(label(r) for r in payload["runs"]))
    for key in keys:
        rs = [r for r in payload["runs"] if label(r) == key]
        marker = "s" if rs[0]["system"] == "fixed" else "o"
        ax.scatter(
            [r["hits"] for r in rs], [100 * r["error_rate"] for r in rs], marker=marker, label=key
        )
    for tg in {r["target_agreement"] for r in payload["runs"] if r["system"] == "verified"}:
        ax.axhline(100 * error_bound(tg), ls=":", color="grey", lw=0.8)
    ax.set_xlabel(f"hits (of {payload['items']} requests)")
    ax.set_ylabel("error rate of hits (%)")
    ax.set_title(f"semantic cache gates, {payload['orders']} orders (dotted: error bounds)")
    ax.legend(fontsize=7)
    return save_figure(fig, "semcache-sim.png")


def write_report(payload: dict[str, Any]) -> None:
    png = plot(payload)
    keys = list(dict.fromkeys(label(r) for r in payload["runs"]))
    per_order = []
    for k in range(payload["orders"]):
        cells = {label(r): r for r in payload["runs"] if r["order"] == k}
        per_order.append(
            [k, *(f"{cells[c]['hits']} ({100 * cells[c]['error_rate']:.2f}%)" for c in keys)]
        )
    fixed = sorted({c for s in payload["summary"] for c in s if c.startswith("dominates_")})
    summary_rows = [
        [
            s["system"],
            s["hits_min"],
            s["hits_mean"],
            s["hits_max"],
            f"{100 * s['error_max']:.2f}%",
            ", ".join(map(str, s["orders_over_bound"])) if "orders_over_bound" in s else "",
            *(s.get(c, "") for c in fixed),
        ]
        for s in payload["summary"]
    ]
    front = [
        [
            f"{f['residual_prior']:g}",
            f"fixed {f['threshold']}",
            f"{len(f['orders_beaten'])} of {payload['orders']}",
            "; ".join(
                f"{k}: {'/'.join(map(str, b))}"
                for k, b in zip(f["orders_beaten"], f["by"], strict=True)
            ),
        ]
        for f in payload.get("frontier", [])
    ]
    head = ["system", "hits min", "mean", "max", "worst error", "orders over the bound"]
    head += [f"orders beating {c.removeprefix('dominates_').replace('_', ' ')}" for c in fixed]
    title = f"Semantic cache gates on {payload['orders']} orders"
    body = f"""## {title} (`cascade-gateway bench semcache-sim`)

{stamp()}, {machine()}. The {payload["items"]:,} tweet requests of `bench semcache` with the
large LM's recorded answers, replayed through the gateway's own gates (policies/semantic.py)
and what the cache does around them, brute-force neighbours, in seconds per order (order 0 is
`bench semcache`'s). Hits count exact repeats too; an error is a hit whose answer differs from
the large LM's for that request. The bound is 1 - target + 0.01. The gate scores each
comparison left out of its fit; `residual_prior` 100 (the default) shrinks a positive residual
by n / (n + 100), 0 turns that off. JSON: `bench/results/semcache-sim.json`.

![hits against error, every order]({png})

{md_table(head, summary_rows)}

Each fixed threshold against the learned gate at any of its targets (an operator picks one):
the orders on which a target within its own bound serves more hits at no higher error, or a
lower error at no fewer hits, and which targets do.

{md_table(["residual_prior", "fixed gate", "beaten on", "order: by targets"], front)}

Hits (error rate) per order:

{md_table(["order", *keys], per_order)}
"""
    write_section("semcache-sim", body)
