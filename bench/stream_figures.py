"""A ``bench stream`` run's figures: whole-stream accuracy, share and cost, and what a user who
has just added a task sees over its first items (``early``, ``saving_positive_from``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bench.harness import ItemResult
from bench.streams import Stream

if TYPE_CHECKING:
    from bench.stream import RunSpec


def summarise(
    spec: RunSpec,
    results: list[ItemResult],
    stream: Stream,
    llm_labels: list[str | None] | None,
    level_seconds: dict[str, float],
    llm_name: str,
) -> dict[str, Any]:
    """One run's figures; ``llm_labels`` None (the large LM's label for every item is not
    known, as over HTTP) leaves agreement out."""
    n = len(results)
    right = [r.label == it.label for r, it in zip(results, stream.items, strict=True)]
    acc = np.mean(right)
    agree = None
    if llm_labels is not None:
        same = [r.label == g for r, g in zip(results, llm_labels, strict=True)]
        agree = round(float(np.mean(same)), 4)
    share = np.mean([r.llm_called for r in results])
    cost = float(sum(r.cost for r in results))
    wall = sum(sum(level_seconds.get(name, 0.0) for name in r.levels_run) for r in results)
    llm_wall = n * level_seconds.get(llm_name, 0.0)
    answered: dict[str, int] = {}
    for r in results:
        answered[r.level] = answered.get(r.level, 0) + 1
    row: dict[str, Any] = {"system": spec.system}
    if spec.knob is not None:
        row[spec.knob] = spec.value
    row.update(
        accuracy=round(float(acc), 4),
        agreement=agree,
        llm_share=round(float(share), 4),
        cost=round(cost, 3),
        cost_ratio=round(cost / n, 4),  # the large LM alone costs 1 per item
        wall_ratio=round(wall / llm_wall, 4) if llm_wall else None,
        answered_by={k: round(v / n, 4) for k, v in sorted(answered.items())},
        degraded=sum(r.degraded for r in results),
        errors=sum(r.error is not None for r in results),
        share_by_tenth=by_window([r.llm_called for r in results], 10),
        accuracy_by_tenth=by_window(right, 10),
        early=early_figures(results, right),
        saving_positive_from=saving_positive_from([r.cost for r in results]),
    )
    return row


EARLY_WINDOWS = (100, 150, 300, 1000)


def early_figures(results: list[ItemResult], right: list[bool]) -> dict[str, dict]:
    """Accuracy, large-LM share and cost ratio over the stream's first N items (``right``:
    whether each answer was correct): what a user who has just added a task pays and gets,
    before the long-run figures apply."""
    out: dict[str, dict] = {}
    for n in EARLY_WINDOWS:
        if len(results) < n:
            continue
        head = results[:n]
        out[str(n)] = {
            "accuracy": round(float(np.mean(right[:n])), 4),
            "llm_share": round(float(np.mean([r.llm_called for r in head])), 4),
            "cost_ratio": round(sum(r.cost for r in head) / n, 4),
        }
    return out


def cumulative_saved(costs: list[float]) -> np.ndarray:
    """Large-LM calls saved so far after each item, against the large LM alone (1 per item)."""
    return np.cumsum(1.0 - np.asarray(costs, dtype=np.float64))


def saving_positive_from(costs: list[float]) -> int | None:
    """The first item from which the cumulative cost stays below the large LM alone's (one per
    item) to the end of the stream; None if it never does."""
    saved = cumulative_saved(costs)
    if not saved.size or saved[-1] <= 0:
        return None
    bad = np.flatnonzero(saved <= 0)
    return int(bad[-1]) + 2 if bad.size else 1  # 1-based item number


def by_window(hits: list[bool], windows: int) -> list[float]:
    """The mean in consecutive slices of the stream: a learning cascade's large-LM share falls
    as it learns (a static one's stays flat), so the whole-stream share mixes warm-up with
    what it settles at."""
    arr = np.array(hits, dtype=np.float64)
    return [round(float(c.mean()), 4) for c in np.array_split(arr, windows) if c.size]
