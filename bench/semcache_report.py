"""The ``bench semcache`` section of docs/BENCHMARKS.md and its plot."""

from __future__ import annotations

from typing import Any

from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section
from bench.semcache_checks import error_bound


def _name(row: dict[str, Any]) -> str:
    if "threshold" in row:
        return f"fixed cosine {row['threshold']}"
    if "target_agreement" in row:
        enc = f", {row['encoder']} encoder" if "encoder" in row else ""
        return f"verified, target {row['target_agreement']}{enc}"
    return row["system"].replace("_", " ")


def plot(payload: dict[str, Any]) -> str:
    fig, ax = new_figure(figsize=(6.4, 4.2))
    for row in payload["runs"][1:]:
        marker = "o" if row["system"] == "verified" else "s" if row["system"] == "fixed" else "^"
        ax.scatter(row["hit_rate"], row["error_rate"], marker=marker, s=50)
        ax.annotate(
            _name(row),
            (row["hit_rate"], row["error_rate"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    for row in payload["runs"]:
        if row["system"] == "verified":
            ax.axhline(error_bound(row["target_agreement"]), ls=":", lw=0.8, color="grey")
    ax.set_xlabel("hit rate (share of requests answered from a cache)")
    ax.set_ylabel("error rate of hits (vs the large LM's own answer)")
    ax.set_title(f"Semantic cache on {payload['items']:,} tweets (duplicates kept)")
    ax.grid(alpha=0.3)
    return save_figure(fig, "semcache.png")


def write_semcache_report(payload: dict[str, Any]) -> None:
    rows = [
        [
            _name(r),
            r["hit_rate"],
            r["semantic_hits"],
            r["exact_hits"],
            r["error_rate"],
            r["min_similarity_served"],
            r["llm_share"],
            r["wall_ratio"],
        ]
        for r in payload["runs"]
    ]
    table = md_table(
        [
            "system",
            "hit rate",
            "semantic hits",
            "exact hits",
            "error rate of hits",
            "lowest cosine served",
            "large-LM share",
            "wall ratio",
        ],
        rows,
    )
    t, m = payload.get("timing") or {}, payload.get("miss_path") or {}
    timing = (
        f"Lookup latency, measured live on {machine()} with nothing else running: the full "
        f"lookup (MiniLM embedding of the request, partition, HNSW search over "
        f"{t['index_entries']:,} entries, {t['bytes_per_entry']:,} bytes of memory each) p50 "
        f"{t['lookup_ms_p50']} ms (p90 {t['lookup_ms_p90']}); the search alone p50 "
        f"{t['search_ms_p50']} ms. A task whose levels embed the request anyway (an encoder "
        "level, as in the default configuration) reuses that embedding, so a miss pays the "
        f"search: {m['added_ms_p50_with_encoder_level']} ms p50, a ratio of "
        f"{m['ratio_with_encoder_level']} to the miss path without it (a large-LM call, "
        f"{m['miss_ms_without']:,.0f} ms here); a task without one pays the embedding too: "
        f"{m['added_ms_p50_without_encoder_level']} ms, ratio "
        f"{m['ratio_without_encoder_level']}; with the same model's weights in int8 "
        f"(`precision: int8`, the verified cache on it is in the table) "
        f"{m.get('added_ms_p50_int8_encoder')} ms, ratio {m.get('ratio_int8_encoder')}."
        if t and m
        else "Timing skipped (--no-timing): wall ratios use an assumed 0.45 s per large-LM call."
    )
    orders = _orders_table(payload)
    checks = _targets(payload.get("targets") or {})
    body = f"""## Semantic cache (`cascade-gateway bench semcache`)

{stamp()}. {payload["items"]:,} requests: the disaster tweets in a seeded order with their
duplicates ({payload["distinct_texts"]:,} distinct texts: retweets, one headline with other
links), answered by the large LM alone behind each cache, so the large-LM share is the misses'.
A hit is an error when its answer differs from the large LM's own answer for that request.
Fixed thresholds serve any neighbour at or above the cosine (what peers ship); the verified
cache learns its threshold online and serves only where the agreement's lower bound shows the
target. JSON: `bench/results/semcache.json`.

{table}

{orders}

{checks}

{timing}

![semantic cache: hit rate against error rate]({plot(payload)})
"""
    write_section("semcache", body)


def _orders_table(payload: dict[str, Any]) -> str:
    """Hits (error rate) per system on each further order of the same requests, and the mean."""
    rows = payload.get("orders") or []
    if not rows:
        return ""
    orders = sorted({r["order"] for r in rows})
    names = list(dict.fromkeys(_name(r) for r in rows))
    table = []
    for name in names:
        mine = [r for r in rows if _name(r) == name]
        by = {r["order"]: r for r in mine}
        cells = [f"{by[k]['hits']} ({by[k]['error_rate']:.1%})" if k in by else "" for k in orders]
        hits = sum(r["hits"] for r in mine) / len(mine)
        err = sum(r["error_rate"] for r in mine) / len(mine)
        table.append([name, *cells, f"{hits:.0f} ({err:.1%})"])
    head = ["system", *(f"order {k}" for k in orders), "mean"]
    return (
        "The same requests in further orders (one order is one draw of which near-repeat "
        "comes first, and a learned gate's early evidence depends on it): hits (error rate "
        "of hits).\n\n" + md_table(head, table)
    )


def _targets(t: dict[str, Any]) -> str:
    """The issue's targets as this run checked them (``bench.semcache.target_checks``)."""
    if not t:
        return ""
    lines = ["Targets, as this run checked them:", ""]
    for key in [k for k in t if k.startswith("error_within_bound")]:
        where = "this order" if key == "error_within_bound" else key.split("bound_")[1]
        for name, ok in t[key].items():
            verdict = "yes" if ok else "NO"
            lines.append(f"- {where}: {name}: error rate within 1 - target + 0.01: {verdict}")
    for name, ratio in t["hits_over_exact"].items():
        lines.append(f"- {name}: {ratio}x the exact cache's hits")
    for key in [k for k in t if k.startswith("dominated_by")]:
        where = "this order" if key == "dominated_by" else key.replace("dominated_by_", "")
        for fixed, by in t[key].items():
            who = ", ".join(by) if by else "NONE"
            lines.append(f"- {where}: {fixed} dominated by {who}")
    return "\n".join(lines)
