"""``bench early``'s docs section and plot: a new task's first items, judged by issue 25's
targets (bench/early_checks.py)."""

from __future__ import annotations

from typing import Any

from bench.early_checks import ACC_POINTS, BREAK_EVEN, SHARE_POINTS, WINDOW, cheapest_fixed
from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _yes(v: bool) -> str:
    return "yes" if v else "**no**"


def _table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for c in cells:
        k = c["checks"]
        rows.append(
            [
                c["stream"],
                c["order"],
                c["system"],
                f"{_pct(k['accuracy'])} ({_pct(k['llm_accuracy'])})",
                _pct(k["llm_share"]),
                _pct(k["fixed_share_at_accuracy"]) if k["fixed_share_at_accuracy"] else "none",
                k["saving_positive_from"] or "never",
                f"{_yes(k['accuracy_ok'])} / {_yes(k['share_ok'])} / {_yes(k['saving_ok'])}",
            ]
        )
    header = [
        "stream",
        "order",
        "learned cascade",
        f"accuracy, first {WINDOW} (large LM alone)",
        "large-LM share",
        "fixed thresholds' share at that accuracy",
        "saving positive from item",
        "accuracy / share / saving",
    ]
    return md_table(header, rows)


def _fixed_table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for c in cells:
        cheapest = cheapest_fixed(c)
        rows.append(
            [
                c["stream"],
                c["order"],
                _pct(c["llm_only"]["early"][WINDOW]["accuracy"]),
                "none" if cheapest is None else f"{cheapest['threshold']:.2f}",
                "-" if cheapest is None else _pct(cheapest["early"][WINDOW]["llm_share"]),
                "-" if cheapest is None else (cheapest["saving_positive_from"] or "never"),
            ]
        )
    header = [
        "stream",
        "order",
        f"large LM alone, first {WINDOW}",
        "cheapest fixed threshold within 1 point",
        "its share",
        "its saving positive from item",
    ]
    return md_table(header, rows)


def plot(payload: dict[str, Any]) -> str:
    """Cumulative cost saved over the first items, per stream (its first order): each learned
    cascade against the cheapest fixed threshold within a point of the large LM alone."""
    streams = payload["streams"]
    order = payload["orders"][0]
    fig, axes = new_figure(1, len(streams), figsize=(5 * len(streams), 4), squeeze=False)
    for ax, name in zip(axes[0], streams, strict=True):
        for c in payload["cells"]:
            if c["stream"] != name or c["order"] != order:
                continue
            if "checks" in c:
                ax.plot(c["run"]["cumulative_saved"], label=c["system"])
                continue
            f = cheapest_fixed(c)
            if f is not None:
                ax.plot(f["cumulative_saved"], "k--", label=f"fixed threshold {f['threshold']:.2f}")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axvline(BREAK_EVEN, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{name} (order {order})")
        ax.set_xlabel("item")
        ax.set_ylabel("cumulative cost saved (large-LM calls)")
        ax.legend(fontsize=7)
    return save_figure(fig, "early.png")


def write_early_report(payload: dict[str, Any]) -> None:
    learned = [c for c in payload["cells"] if "checks" in c]
    baselines = [c for c in payload["cells"] if "fixed" in c]
    summ = md_table(
        ["learned cascade", "stream-orders", "accuracy ok", "share ok", "saving ok", "all ok"],
        [
            [k, v["runs"], v["accuracy_ok"], v["share_ok"], v["saving_ok"], v["ok"]]
            for k, v in payload["summary"].items()
        ],
    )
    body = f"""## A new task's first items (`bench early`)

Written by `cascade-gateway bench early --configs {",".join(payload["configs"])}` on
{stamp()} ({machine()}). Streams: {", ".join(payload["streams"])}, {payload["items"]:,} items
each, orders {", ".join(map(str, payload["orders"]))} (0: the stream's own; k: reshuffled with
seed k); large-LM answers replayed from bench/annotations; unfused: {
        ", ".join(payload["no_fuse"]) or "none"
    }. Fixed thresholds: {", ".join(f"{t:.2f}" for t in payload["thresholds"])}.

Targets (issue 25), over the first {WINDOW} items: accuracy within {100 * ACC_POINTS:g} point
of the large LM alone or above; large-LM share at most {100 * SHARE_POINTS:g} points above
the fixed thresholds' share at the same accuracy (read off their frontier: any mix of two
thresholds; "none" where no mix reaches that accuracy); cumulative cost saved positive from
item {BREAK_EVEN} on.

{summ}

{_table(learned)}

The fixed thresholds on the same items:

{_fixed_table(baselines)}

![cumulative cost saved]({plot(payload)})
"""
    write_section("early", body)
