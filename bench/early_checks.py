"""Issue 25's targets for a new task's first items, read off ``bench early`` runs.

Over the first ``WINDOW`` items of each stream and order, a learned run passes when:
- its accuracy is within ``ACC_POINTS`` of the large LM alone's on the same items (or above);
- its large-LM share is at most ``SHARE_POINTS`` above the share the fixed thresholds need for
  the same accuracy. The fixed thresholds are read as a frontier: a deployment can split its
  traffic between two thresholds, so any mix of two measured points is reachable, and the
  share at an accuracy is the least over those mixes (None when no mix reaches it);
- its cumulative cost saved (against the large LM alone) is positive from item
  ``BREAK_EVEN`` on, to the end of the stream.
"""

from __future__ import annotations

from typing import Any

WINDOW = "300"
ACC_POINTS = 0.01
SHARE_POINTS = 0.05
BREAK_EVEN = 150


def fixed_share_at(points: list[tuple[float, float]], accuracy: float) -> float | None:
    """The least large-LM share at which a mix of two fixed points (share, accuracy) reaches
    ``accuracy``; None when none does."""
    best: float | None = None
    for s1, a1 in points:
        if a1 >= accuracy:
            best = s1 if best is None else min(best, s1)
            continue
        for s2, a2 in points:
            if a2 > accuracy:  # mix a share lam of the second point into the first
                lam = (accuracy - a1) / (a2 - a1)
                s = s1 + lam * (s2 - s1)
                best = s if best is None else min(best, s)
    return best


def _window(run: dict[str, Any]) -> dict[str, float]:
    return run["early"][WINDOW]


def run_checks(run: dict[str, Any], llm: dict[str, Any], fixed: list[dict[str, Any]]) -> dict:
    """One learned run against the large LM alone and the fixed thresholds of its order."""
    w, ref = _window(run), _window(llm)
    points = [(_window(f)["llm_share"], _window(f)["accuracy"]) for f in fixed]
    points.append((ref["llm_share"], ref["accuracy"]))
    at = fixed_share_at(points, w["accuracy"])
    start = run.get("saving_positive_from")
    out = {
        "accuracy": w["accuracy"],
        "llm_accuracy": ref["accuracy"],
        "llm_share": w["llm_share"],
        "fixed_share_at_accuracy": None if at is None else round(at, 4),
        "saving_positive_from": start,
        "accuracy_ok": w["accuracy"] >= round(ref["accuracy"] - ACC_POINTS, 6),
        # no mix of fixed thresholds reaches this accuracy: none matches it at any share
        "share_ok": at is None or w["llm_share"] <= round(at + SHARE_POINTS, 6),
        "saving_ok": start is not None and start <= BREAK_EVEN,
    }
    out["ok"] = out["accuracy_ok"] and out["share_ok"] and out["saving_ok"]
    return out


def summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per learned system (config and target): how many stream-orders pass each target."""
    keys = ("accuracy_ok", "share_ok", "saving_ok", "ok")
    out: dict[str, Any] = {}
    for c in cells:
        s = out.setdefault(c["system"], dict.fromkeys(("runs", *keys), 0))
        s["runs"] += 1
        for k in keys:
            s[k] += int(c["checks"][k])
    return out


def cheapest_fixed(cell: dict[str, Any]) -> dict[str, Any] | None:
    """The fixed threshold of a stream-order with the least large-LM share among those within
    ``ACC_POINTS`` of the large LM alone's accuracy; None if none is."""
    llm = _window(cell["llm_only"])["accuracy"]
    near = [f for f in cell["fixed"] if _window(f)["accuracy"] >= llm - ACC_POINTS]
    return min(near, key=lambda f: _window(f)["llm_share"], default=None)
