"""``bench semcache``'s targets, checked on the run's own rows (issue 22's wording)."""

from __future__ import annotations

from typing import Any


def label(row: dict[str, Any]) -> str:
    parts = [row["system"], str(row.get("threshold", row.get("target_agreement", "")))]
    return " ".join(parts + ([row["encoder"]] if "encoder" in row else [])).strip()


def error_bound(target: float) -> float:
    """The issue's bound on a verified cache's error rate at ``target`` (rounded: 1 - 0.9 +
    0.01 is 0.10999999999999999 in floating point)."""
    return round(1 - target + 0.01, 6)


def within_bound(row: dict[str, Any]) -> bool:
    return row["error_rate"] <= error_bound(row["target_agreement"])


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` serves more hits at no higher error rate, or a lower error rate at no fewer."""
    return (a["hits"] > b["hits"] and a["error_rate"] <= b["error_rate"]) or (
        a["error_rate"] < b["error_rate"] and a["hits"] >= b["hits"]
    )


def target_checks(rows: list[dict[str, Any]], orders: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, checked on this run: each verified cache's error rate within
    1 - target + 0.01 and, for each fixed threshold, which verified caches dominate it, on this
    order and on each further one; at target 0.95 at least twice the exact cache's hits."""
    exact = next(r for r in rows if r["system"] == "exact")
    verified = [r for r in rows if r["system"] == "verified"]
    fixed = [r for r in rows if r["system"] == "fixed"]
    out: dict[str, Any] = {
        "error_within_bound": {label(r): within_bound(r) for r in verified},
        "hits_over_exact": {
            label(r): round(r["hits"] / max(exact["hits"], 1), 2) for r in verified
        },
        "dominated_by": {label(f): [label(v) for v in verified if dominates(v, f)] for f in fixed},
    }
    for k in sorted({r["order"] for r in orders}):
        mine = [r for r in orders if r["order"] == k]
        out[f"error_within_bound_order_{k}"] = {
            label(r): within_bound(r) for r in mine if r["system"] == "verified"
        }
        out[f"dominated_by_order_{k}"] = {
            label(f): [label(v) for v in mine if v["system"] == "verified" and dominates(v, f)]
            for f in mine
            if f["system"] == "fixed"
        }
    return out
