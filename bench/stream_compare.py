"""``bench stream-compare``: is a change to the cascade's learning neutral on a stream?

One order of a stream is one draw of a chaotic process: the online loop refits on what it has
seen, a 1e-7 difference in a refit (another BLAS thread count, another summation order) flips
one decision near a threshold, and the run diverges from there. So a change is judged over
several orders: for each order the cascade's accuracy-against-share curve before and after
the change (``bench stream --order-seed K`` runs of the same targets), each read at the same
large-LM shares by linear interpolation, and the difference averaged over the orders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section

#: The large-LM shares at which the curves are compared (where the committed targets land).
SHARES = (0.10, 0.15, 0.20, 0.25, 0.30, 0.35)


def curve(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The cascade rows of one ``bench stream`` result: shares and accuracies, by share."""
    rows = sorted(
        (r["llm_share"], r["accuracy"]) for r in payload["runs"] if r["system"] == "cascade"
    )
    if len(rows) < 2:
        raise ValueError("a curve needs at least two cascade rows (targets)")
    share, acc = zip(*rows, strict=True)
    return np.array(share), np.array(acc)


def read_at(share: np.ndarray, acc: np.ndarray, at: float) -> float | None:
    """Accuracy at a share, interpolated between the two nearest runs; None outside them."""
    if at < share[0] or at > share[-1]:
        return None
    return float(np.interp(at, share, acc))


def _order_of(payload: dict[str, Any]) -> str:
    k = payload.get("order_seed")
    return "committed" if k is None else str(k)


def compare(pairs: list[tuple[Path, Path]], shares: tuple[float, ...] = SHARES) -> dict[str, Any]:
    """Per order and share: accuracy after minus before, in points; then the mean over the
    orders that reach that share in both runs."""
    orders = []
    for before_p, after_p in pairs:
        before, after = json.loads(before_p.read_text()), json.loads(after_p.read_text())
        if before.get("order_seed") != after.get("order_seed"):
            raise ValueError(f"{before_p} and {after_p} are different orders")
        b, a = curve(before), curve(after)
        diffs: dict[str, float | None] = {}
        for s in shares:
            vb, va = read_at(*b, s), read_at(*a, s)
            d = None if vb is None or va is None else round(100 * (va - vb), 3) + 0.0
            diffs[f"{s:.2f}"] = d  # + 0.0: no "-0" in the table
        orders.append(
            {
                "order": _order_of(before),
                "before": str(before_p),
                "after": str(after_p),
                "diff_points": diffs,
            }
        )
    mean: dict[str, float | None] = {}
    count: dict[str, int] = {}
    for s in shares:
        vals = [o["diff_points"][f"{s:.2f}"] for o in orders]
        vals = [v for v in vals if v is not None]
        count[f"{s:.2f}"] = len(vals)
        mean[f"{s:.2f}"] = round(float(np.mean(vals)), 3) + 0.0 if vals else None
    return {"shares": list(shares), "orders": orders, "mean_points": mean, "orders_at": count}


def plot(result: dict[str, Any], name: str) -> str:
    fig, ax = new_figure(figsize=(7, 4))
    xs = [100 * s for s in result["shares"]]
    for o in result["orders"]:
        ys = [o["diff_points"][f"{s:.2f}"] for s in result["shares"]]
        ax.plot(
            xs,
            [np.nan if y is None else y for y in ys],
            "o-",
            alpha=0.35,
            lw=1,
            label=f"order {o['order']}",
        )
    mean = [result["mean_points"][f"{s:.2f}"] for s in result["shares"]]
    ax.plot(xs, [np.nan if y is None else y for y in mean], "k-", lw=2.5, label="mean")
    tol = result["tolerance_points"]
    ax.axhspan(-tol, tol, color="green", alpha=0.1, label=f"within {tol} point")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("large-LM share (%)")
    ax.set_ylabel("accuracy after - before (points)")
    ax.set_title(f"{name}: the change, order by order")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, f"{name}.png")


def write_compare_report(
    pairs: list[tuple[Path, Path]], name: str, what: str, tolerance: float, out: Path | None
) -> dict[str, Any]:
    """The comparison as JSON (``out``), a docs section ``compare:<name>`` and a PNG."""
    result = compare(pairs)
    result["tolerance_points"] = tolerance
    within = {k: v is not None and abs(v) <= tolerance for k, v in result["mean_points"].items()}
    result["mean_within_tolerance"] = within
    if out is not None:
        from bench.stream import write_json

        write_json(out, result)
    png = plot(result, name)
    shares = [f"{s:.2f}" for s in result["shares"]]
    header = ["order", *(f"{100 * float(s):.0f}%" for s in shares)]
    rows = [[o["order"], *(o["diff_points"][s] for s in shares)] for o in result["orders"]]
    rows.append(["**mean**", *(result["mean_points"][s] for s in shares)])
    rows.append(["orders", *(result["orders_at"][s] for s in shares)])
    verdict = ", ".join(f"{100 * float(s):.0f}%: {'yes' if within[s] else 'no'}" for s in shares)
    body = f"""## Same stream, before and after: {name}

{stamp()}, {machine()}. {what}

Each order is a `bench stream --order-seed K` run of the same targets before and after the
change; each run's cascade curve is read at the same large-LM shares (linear interpolation
between its targets' runs) and the table gives accuracy after minus before, in points (blank:
a share outside one run's curve). One order is one draw of a chaotic online loop, so the
change is judged on the mean. JSON: `{out}`.

![after minus before]({png})

{md_table(header, rows)}

Mean within {tolerance} point at each share: {verdict}.
"""
    write_section(f"compare:{name}", body)
    return result
