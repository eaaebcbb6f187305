"""Turn raw counters into the per-task, per-level figures of ``/admin/stats``."""

from __future__ import annotations

import math
from typing import Any

from cascade.counters import LevelStat, TaskStat, level_key


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for a proportion; None without observations."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def level_stats(c: dict[str, float], name: str) -> dict[str, Any]:
    def g(stat: LevelStat) -> float:
        return c.get(level_key(name, stat), 0.0)

    seen, answered, deferred = g(LevelStat.SEEN), g(LevelStat.ANSWERED), g(LevelStat.DEFERRED)
    out: dict[str, Any] = {
        "seen": int(seen),
        "answered": int(answered),
        "deferred": int(deferred),
        "deferral_rate": _r(deferred / seen) if seen else None,
        "invalid": int(g(LevelStat.INVALID)),
        "failed": int(g(LevelStat.FAILED)),
        "explored": int(g(LevelStat.EXPLORED)),
        "skipped": int(g(LevelStat.SKIPPED)),
        "aborted": int(g(LevelStat.ABORTED)),
        "mean_latency_ms": _r(g(LevelStat.LATENCY_MS) / seen, 3) if seen else None,
    }
    n, agree = g(LevelStat.AGREE_N), g(LevelStat.AGREE)
    out["agreement_with_large"] = {
        "n": int(n),
        "rate": _r(agree / n) if n else None,
        "ci95": [_r(x) for x in ci] if (ci := wilson(agree, n)) else None,
    }
    # unbiased: among explored items the level would have answered
    en, ea = g(LevelStat.EST_N), g(LevelStat.EST_AGREE)
    out["agreement_when_answering"] = {
        "n": int(en),
        "estimate": _r(ea / en) if en else None,
        "ci95": [_r(x) for x in ci] if (ci := wilson(ea, en)) else None,
    }
    return out


def task_stats(c: dict[str, float], level_names: list[str]) -> dict[str, Any]:
    requests = c.get(TaskStat.REQUESTS, 0.0)
    cost, llm_only = c.get(TaskStat.COST, 0.0), c.get(TaskStat.COST_LLM_ONLY, 0.0)
    hits = c.get(TaskStat.CACHE_HITS, 0.0)
    return {
        "requests": int(requests),
        "cache_hits": int(hits),
        "cache_hit_rate": _r(hits / requests) if requests else None,
        "large_llm_calls": int(c.get(TaskStat.LLM_CALLS, 0.0)),
        "large_llm_share": _r(c.get(TaskStat.LLM_CALLS, 0.0) / requests) if requests else None,
        "degraded": int(c.get(TaskStat.DEGRADED, 0.0)),
        "unavailable": int(c.get(TaskStat.UNAVAILABLE, 0.0)),
        # refused without an answer: prompts past the large LM's context (a 400), and
        # requests shed because too many already waited for a model (a 503 with Retry-After)
        "bad_input": int(c.get(TaskStat.BAD_INPUT, 0.0)),
        "shed": int(c.get(TaskStat.SHED, 0.0)),
        "cost": _r(cost, 6),
        "cost_llm_only": _r(llm_only, 6),
        "cost_saved": _r(llm_only - cost, 6),
        "cost_saved_rate": _r(1 - cost / llm_only) if llm_only else None,
        "demonstrations": int(c.get(TaskStat.DEMOS, 0.0)),
        # large-LM answers served fused with cheaper LMs' (params.fuse), and how many of those
        # the fusion changed
        "fused": int(c.get(TaskStat.FUSED, 0.0)),
        "fused_changed": int(c.get(TaskStat.FUSED_CHANGED, 0.0)),
        "semantic_cache": semantic_stats(c, requests),
        "levels": {name: level_stats(c, name) for name in level_names},
    }


def semantic_stats(c: dict[str, float], requests: float) -> dict[str, Any]:
    """Semantic hits, and their agreement with the large LM as the verification sample (a
    uniform draw of would-be hits, checked by running the cascade) measures it."""
    hits = c.get(TaskStat.SEM_HITS, 0.0)
    n, agree = c.get(TaskStat.SEM_VERIFIED, 0.0), c.get(TaskStat.SEM_VERIFIED_AGREE, 0.0)
    return {
        "hits": int(hits),
        "hit_rate": _r(hits / requests) if requests else None,
        "cost_saved": _r(c.get(TaskStat.SEM_SAVED, 0.0), 6),
        "verified": int(n),
        "verified_agreement": _r(agree / n) if n else None,
        "verified_agreement_ci95": [_r(x) for x in ci] if (ci := wilson(agree, n)) else None,
        "comparisons": int(c.get(TaskStat.SEM_COMPARED, 0.0)),
    }


def series_point(ts: int, c: dict[str, float], level_names: list[str]) -> dict[str, Any]:
    """One time bucket of the dashboard's charts."""
    requests = c.get(TaskStat.REQUESTS, 0.0)
    llm_only = c.get(TaskStat.COST_LLM_ONLY, 0.0)

    def rate(num: float, den: float) -> float | None:
        return _r(num / den) if den else None

    return {
        "t": ts,
        "requests": int(requests),
        "cache_hit_rate": rate(c.get(TaskStat.CACHE_HITS, 0.0), requests),
        "semantic_hit_rate": rate(c.get(TaskStat.SEM_HITS, 0.0), requests),
        "large_llm_share": rate(c.get(TaskStat.LLM_CALLS, 0.0), requests),
        "cost_saved_rate": rate(llm_only - c.get(TaskStat.COST, 0.0), llm_only),
        "deferral_rate": {
            n: rate(
                c.get(level_key(n, LevelStat.DEFERRED), 0.0),
                c.get(level_key(n, LevelStat.SEEN), 0.0),
            )
            for n in level_names[:-1]
        },
        "agreement": {
            n: rate(
                c.get(level_key(n, LevelStat.AGREE), 0.0),
                c.get(level_key(n, LevelStat.AGREE_N), 0.0),
            )
            for n in level_names[:-1]
        },
    }
