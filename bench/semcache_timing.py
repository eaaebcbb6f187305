"""``bench semcache``'s live timing: what a semantic lookup adds to a request that misses."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.streams import Stream


async def time_lookups(
    template: Any, base: Any, pool: Any, encoder: Any, stream: Stream, n: int, name: str
) -> dict[str, float]:
    """Lookup latency on ``encoder`` itself (no memo; ``name``: its backend's), against an
    index holding the rest of the stream: the full lookup (embedding, partition, search) and
    the search alone."""
    import tempfile

    from cascade.levels import Query
    from cascade.prompts import render_messages
    from cascade.runner import Cascade
    from cascade.semantic import partitions, semantic_lookup
    from cascade.store.memory import MemoryStore

    sem_cfg = {"encoder": name, "target_agreement": 0.95}
    task = type(template).model_validate({**template.model_dump(), "semantic_cache": sem_cfg})
    config = base.model_copy(update={"tasks": {"bench": task}})
    cascade = Cascade(config, pool, MemoryStore(Path(tempfile.mkdtemp(prefix="cg-semtime-"))))
    rt = cascade.tasks["bench"]
    sem = rt.semantic
    assert sem is not None

    def query(text: str) -> Query:
        return Query("bench", text, render_messages(task.prompt, text), task.max_tokens)

    fill = stream.items[:-n]
    part = partitions(rt, query(fill[0].text), None, "")[0]
    vecs = encoder.embed([it.text for it in fill])
    rss0 = rss_bytes()
    for j, (it, v) in enumerate(zip(fill, vecs, strict=True)):
        sem.index(f"{j}-0", sem.entry_fields(part, v, it.text[:60], "yes", "large", 0.8))
    per_entry = (rss_bytes() - rss0) / max(len(fill), 1)
    sem.encoder = encoder  # the encoder itself: what a request pays
    for it in stream.items[-n - 30 : -n]:  # warm the one-request path (shapes, threads)
        await semantic_lookup(rt, query(it.text), None, None)
    full, search = [], []
    for it in stream.items[-n:]:
        look = await semantic_lookup(rt, query(it.text), None, None)
        assert look is not None
        full.append(look.lookup_ms)
        t0 = time.perf_counter()
        sem.lookup(look.parts, look.vec)
        search.append((time.perf_counter() - t0) * 1000)
    return {
        "lookup_ms_p50": round(statistics.median(full), 3),
        "lookup_ms_p90": round(float(np.percentile(full, 90)), 3),
        "search_ms_p50": round(statistics.median(search), 3),
        "index_entries": len(sem),
        "bytes_per_entry": round(per_entry),
    }


def miss_path(
    timing: dict[str, float] | None, fast: dict[str, float] | None, llm_s: float
) -> dict[str, float] | None:
    """What a lookup adds to a request that misses, against the miss path without it (a
    large-LM call at the measured seconds): a task whose levels embed the request anyway
    (an encoder level: the lookup reuses that embedding) adds the search; one without pays
    the embedding too."""
    if not timing:
        return None
    miss_ms = llm_s * 1000
    return {
        "miss_ms_without": round(miss_ms, 1),
        "added_ms_p50_with_encoder_level": timing["search_ms_p50"],
        "added_ms_p50_without_encoder_level": timing["lookup_ms_p50"],
        "ratio_with_encoder_level": round((miss_ms + timing["search_ms_p50"]) / miss_ms, 4),
        "ratio_without_encoder_level": round((miss_ms + timing["lookup_ms_p50"]) / miss_ms, 4),
        **(
            {
                "added_ms_p50_int8_encoder": fast["lookup_ms_p50"],
                "ratio_int8_encoder": round((miss_ms + fast["lookup_ms_p50"]) / miss_ms, 4),
            }
            if fast
            else {}
        ),
    }


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident memory (Linux; by default this one's)."""
    import os

    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
