"""``bench generate``'s section of docs/BENCHMARKS.md: the targets, the rules, the runs, a plot."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.report import machine, md_table, new_figure, save_figure, stamp, write_section


def _label(r: dict[str, Any]) -> str:
    if r["system"] != "cascade":
        return r["system"]
    extras = "".join(
        f"+{x}" for x, on in (("abort", r["early_abort"]), ("router", r["prerouter"])) if on
    )
    return f"{r['rule']}{extras}"


def _knob(r: dict[str, Any]) -> str:
    if r.get("target_agreement") is not None:
        return f"t={r['target_agreement']}"
    if r.get("threshold") is not None:
        return f"thr={r['threshold']:.3g}"
    return ""


def plot(payload: dict[str, Any]) -> str:
    fig, (ax, bx) = new_figure(1, 2, figsize=(13, 5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in payload["runs"]:
        knob = " (target)" if r.get("target_agreement") is not None else ""
        groups.setdefault(_label(r) + knob, []).append(r)
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["wall_ratio"])
        marker = "o" if name.startswith("posthoc_hidden") else "."
        ax.plot(
            [r["wall_ratio"] for r in rs],
            [r["acceptable"] for r in rs],
            marker=marker,
            ls="-" if len(rs) > 1 else "",
            label=name,
            lw=1.2,
            ms=5,
        )
    ax.axhline(0.85, color="grey", ls=":", lw=1)
    ax.axvline(0.80, color="grey", ls=":", lw=1)
    ax.set_xlabel("wall ratio (measured, vs the large LM alone)")
    ax.set_ylabel("acceptable (overall)")
    ax.set_title("Operating curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    tgt = [r for r in payload["runs"] if r.get("target_agreement") is not None]
    for name in sorted({_label(r) for r in tgt}):
        rs = sorted((r for r in tgt if _label(r) == name), key=lambda r: r["target_agreement"])
        bx.plot(
            [r["target_agreement"] for r in rs],
            [r["acceptable_answered"] or np.nan for r in rs],
            marker="o",
            label=name,
        )
    lo = min((r["target_agreement"] for r in tgt), default=0.7)
    bx.plot([lo, 0.95], [lo - 0.02, 0.93], color="grey", ls="--", label="target - 0.02")
    bx.set_xlabel("target_agreement")
    bx.set_ylabel("acceptable among the answers the cascade gave itself")
    bx.set_title("Does the knob hold?")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="lower right")
    return save_figure(fig, f"generate-{payload['stream']}.png")


def targets(payload: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its measured figure and met / not met."""
    runs = payload["runs"]
    lines = []
    knob = [r for r in runs if r.get("target_agreement") is not None and r["rule"] != "llm_only"]
    held = [
        r
        for r in knob
        if r["acceptable_answered"] is None
        or r["acceptable_answered"] >= r["target_agreement"] - 0.02
    ]
    worst = min(
        knob, key=lambda r: (r["acceptable_answered"] or 1) - r["target_agreement"], default=None
    )
    if worst is not None:
        verdict = "met" if len(held) == len(knob) else "not met"
        most = max(1 - r["llm_share"] for r in knob)
        lines.append(
            f"- Knob holds (acceptable_answered >= t - 0.02 in every run with a target): "
            f"{len(held)}/{len(knob)} runs; worst {_label(worst)} {_knob(worst)}: "
            f"{worst['acceptable_answered']} - **{verdict}**; the most any of them answered "
            f"itself: {100 * most:.1f}% of the traffic"
            + (" (it held by answering almost nothing)." if most < 0.05 else ".")
        )
    rows = {r["rule"]: r for r in payload["rules"]}
    best = rows.get(payload["best_simple_rule"])
    hid = rows.get("posthoc_hidden")
    if best and hid:
        ratio = hid["oracle_share"] / best["oracle_share"] if best["oracle_share"] else float("inf")
        ok = hid["oracle_share"] >= 0.5 and ratio >= 1.25
        lines.append(
            f"- Hidden-state signal: posthoc_hidden captures {100 * hid['oracle_share']:.0f}% of "
            f"the oracle's AUC-DF gain (target >= 50%), {ratio:.2f}x the best simple rule "
            f"`{best['rule']}` ({100 * best['oracle_share']:.0f}%; target >= 1.25x) - "
            f"**{'met' if ok else 'not met'}**."
        )
    small = next((r for r in runs if r["system"] == "small_only"), None)
    base = payload["quality"]["base_rate"]
    if small is not None and base < 0.85:
        # the best any rule could do: defer exactly the unacceptable answers, 0.85 - base of
        # the traffic; with the small LM run on everything, or skipped on those by a router
        need = 0.85 - base
        run_all = small["wall_ratio"] + need
        routed = (1 - need) * small["wall_ratio"] + need
        lines.append(
            f"- What a perfect rule could reach: acceptable 0.85 needs {100 * need:.1f}% of the "
            f"traffic deferred (small LM {100 * base:.1f}% acceptable, costing "
            f"{small['wall_ratio']:.2f} of the large LM here); with the small LM run on every "
            f"request that is a wall ratio of {run_all:.2f} at best, and {routed:.2f} only if a "
            "router skipped the small LM on exactly those requests."
        )
    llm = next((r for r in runs if r["system"] == "llm_only"), None)
    good = [r for r in runs if r["system"] == "cascade" and r["acceptable"] >= 0.85]
    if llm is not None:
        best_run = min(good, key=lambda r: r["wall_ratio"], default=None)
        if best_run is None:
            lines.append("- Savings: no cascade run reached acceptable >= 0.85 - **not met**.")
        else:
            p95 = best_run["deferred_p95_ms"] or 0.0
            ok = best_run["wall_ratio"] <= 0.80 and p95 <= 1.3 * llm["p95_ms"]
            lines.append(
                f"- Savings: lowest wall ratio at acceptable >= 0.85: {_label(best_run)} "
                f"{_knob(best_run)}: acceptable {best_run['acceptable']}, wall ratio "
                f"{best_run['wall_ratio']} (target <= 0.80), deferred requests' p95 "
                f"{p95:.0f} ms = {p95 / llm['p95_ms']:.2f}x llm_only's {llm['p95_ms']:.0f} ms "
                f"(target <= 1.3x) - **{'met' if ok else 'not met'}**."
            )
    return lines


def write_generate_report(payload: dict[str, Any], args: Any) -> None:
    png = plot(payload)
    rules = md_table(
        ["rule", "AUC-DF", "AUC-DF (quality)", "share of oracle gain"],
        [
            [r["rule"], r["auc_df"], r["auc_df_quality"], f"{100 * r['oracle_share']:.0f}%"]
            for r in payload["rules"]
        ],
    )
    runs = md_table(
        [
            "system",
            "knob",
            "acceptable",
            "acc. answered",
            "large-LM share",
            "small-LM share",
            "aborted",
            "cost ratio",
            "wall ratio",
            "p50 ms",
            "p95 ms",
            "deferred p95 ms",
        ],
        [
            [
                _label(r),
                _knob(r),
                r["acceptable"],
                r["acceptable_answered"],
                r["llm_share"],
                r["small_share"],
                r["abort_share"],
                r["cost_ratio"],
                r["wall_ratio"],
                r["p50_ms"],
                r["p95_ms"],
                r["deferred_p95_ms"],
            ]
            for r in payload["runs"]
        ],
    )
    q, c = payload["quality"], payload["costs"]
    sets = ", ".join(f"{k} {v}" for k, v in payload["sets"].items())
    cmd = f"cascade-bench generate --sets {args.sets} --order-seed {args.order_seed}"
    if args.out is not None:
        cmd += f" --out {args.out}"
    body = f"""## Generative cascades: {payload["stream"]} ({payload["items"]} prompts)

Written by `{cmd}` on {stamp()} ({machine()}). Prompts: {sets}, served in order seed
{payload["order_seed"]}. Acceptable = {q["measure"]} to the large LM's answer >=
{q["threshold"]} (base rate of the small LM {100 * q["base_rate"]:.1f}%). Every system replays
the recorded stream with the gateway's own policies learning online (bench/gen_sim.py). Wall
time per call, measured live in this run on {c["samples"]} prompts: small LM prefill
{c["small_prefill"][0]:.0f} ms + {c["small_prefill"][1]:.2f} ms/prompt token, then
{c["small_token_ms"]:.1f} ms/token; large LM {c["large"][0]:.0f} ms + {c["large"][1]:.2f}
ms/prompt token + {c["large"][2]:.1f} ms/answer token; prompt embedding {c["embed_ms"]:.1f} ms.

{chr(10).join(targets(payload))}

![operating curves]({png})

### Deferral rules (AUC-DF, every item labelled, online)

{rules}

### Runs

{runs}
"""
    write_section(f"generate:{payload['stream']}", body)
