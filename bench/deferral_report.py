"""The deferral benchmark's section of docs/BENCHMARKS.md and its deferral-curve plot."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section


def plot(payload: dict[str, Any], curves: dict[str, np.ndarray]) -> str:
    fig, ax = new_figure(figsize=(7.5, 5))
    base = payload["quality"]["base_rate"]
    ax.plot([0, 1], [base, 1], color="grey", ls="--", label="random")
    for name, c in sorted(curves.items(), key=lambda kv: -float(np.mean(kv[1]))):
        x = np.linspace(0, 1, len(c))
        style = ":" if name == "oracle" else "-"
        ax.plot(x, c, style, label=name, lw=1.6 if name.startswith("posthoc") else 1.1)
    ax.set_xlabel("fraction deferred to the large LM")
    ax.set_ylabel(
        f"share of acceptable answers ({payload['quality']['measure']} "
        f">= {payload['quality']['threshold']})"
    )
    ax.set_title(f"Deferral curves: {payload['stream']}, {payload['items']} prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, f"deferral-{payload['stream']}.png")


def write_deferral_report(
    payload: dict[str, Any], curves: dict[str, np.ndarray], args: Any
) -> None:
    png = plot(payload, curves)
    table = md_table(
        [
            "rule",
            "AUC-DF (acceptable)",
            "AUC-DF (quality)",
            "gain vs random",
            "share of oracle gain",
        ],
        [
            [
                r["rule"],
                r["auc_df"],
                r["auc_df_quality"],
                f"{100 * r['gain_vs_random']:.1f}%",
                f"{100 * r['oracle_share']:.0f}%",
            ]
            for r in payload["rules"]
        ],
    )
    pr = payload["prerouter"]
    pre = md_table(
        [
            "cascade",
            "quality",
            "acceptable",
            "large-LM share",
            "small-LM share",
            "cost ratio",
            "wall ratio",
        ],
        [
            [
                name,
                pr[name]["quality"],
                pr[name]["acceptable"],
                pr[name]["llm_share"],
                pr[name]["small_share"],
                pr[name]["cost_ratio"],
                pr[name]["wall_ratio"],
            ]
            for name in ("without", "with")
        ],
    )
    secs = ", ".join(f"{k} {v:.3f}" for k, v in payload["seconds_per_call"].items())
    q = payload["quality"]
    src = f"--file {args.file}" if args.file else ""
    body = f"""## Deferral rules: {payload["stream"]} ({payload["items"]} prompts)

Written by `cascade-gateway bench deferral {src} --limit {payload["items"]}` on {stamp()}
({machine()}). Acceptable = {q["measure"]} to the large LM's answer >= {q["threshold"]}
(base rate {100 * q["base_rate"]:.1f}%). Learned rules are scored online in stream order, each
item before it is learned from. Best simple rule: `{payload["best_simple_rule"]}`.

![deferral curves]({png})

{table}

### Pre-router

A router (logistic regression on hashed n-grams and the prompt's MiniLM embedding, learned
online from importance-weighted demonstrations) sends a prompt straight to the large LM when it
predicts P(the small level's policy accepts its answer) < {pr["router_threshold"]}. Same
stream, same deferral rule, without any router and with one. Seconds per call measured live:
{secs}.

{pre}

Cost saved by the router: {100 * pr["cost_saved"]:.1f}% (configured units),
{100 * pr["wall_saved"]:.1f}% (measured wall time); quality change {pr["quality_delta"]:+.4f}.
"""
    write_section(f"deferral:{payload['stream']}", body)
