"""Which systems ``bench generate`` replays, and the JSON it writes about them."""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from bench.deferral import LEARNED_RULES, SIMPLE_RULES, best_simple, rule_rows, simple_scores
from bench.gen_data import Trace
from bench.gen_sim import Sim, System, summarise
from bench.gen_timing import Costs
from bench.harness import Progress

#: the deferral shares a fixed threshold is placed at (from the rule's score quantiles)
THRESHOLD_SHARES = (0.2, 0.4, 0.6)


def systems(
    best_simple_rule: str,
    simple_thresholds: dict[str, list[float]],
    targets: list[float],
    only: set[str] | None,
) -> list[System]:
    out = [System("llm_only"), System("small_only")]
    for rule, thrs in simple_thresholds.items():
        for thr in thrs:
            out.append(System("cascade", rule, SIMPLE_RULES[rule], threshold=thr))
    for t in targets:
        out.append(System("cascade", best_simple_rule, SIMPLE_RULES[best_simple_rule], t))
    for rule, kind in LEARNED_RULES.items():
        for t in targets:
            out.append(System("cascade", rule, kind, t))
    hidden = LEARNED_RULES["posthoc_hidden"]
    for abort, router in ((True, False), (False, True), (True, True)):
        for t in targets:
            out.append(System("cascade", "posthoc_hidden", hidden, t, None, abort, router))
    if only:
        out = [s for s in out if s.system != "cascade" or s.rule in only]
    return out


def payload_for(
    traces: list[Trace], task: Any, costs: Costs, args: Any, name: str
) -> dict[str, Any]:

    thr = task.quality.threshold
    small_cost = task.levels[-2].cost
    # the configured small level's learning sample (its rule and target are swept instead)
    small = task.levels[-2].policy.model_dump()
    sim = Sim(
        traces,
        costs,
        thr,
        small_cost,
        seed=args.order_seed,
        learn_share=small.get("learn_share", 1.0),
        idle_share=small.get("idle_share"),
        enter_z=small.get("enter_z"),
        min_answer_share=small.get("min_answer_share"),
    )
    feats = [sim.features(tr) for tr in traces]
    quality = np.array([tr.quality for tr in traces])
    acceptable = quality >= thr
    t0 = time.perf_counter()
    rows, curves = rule_rows(feats, quality, acceptable, args.seed)
    print(f"rules scored in {time.perf_counter() - t0:.0f} s", flush=True)
    best = best_simple(rows)["rule"]
    thresholds = {}
    for rule, kind in SIMPLE_RULES.items():
        s = simple_scores(kind, feats)
        finite = s[np.isfinite(s)]
        thresholds[rule] = [float(np.quantile(finite, 1 - share)) for share in THRESHOLD_SHARES]
    targets = [float(t) for t in args.targets.split(",") if t.strip()]
    only = {r.strip() for r in args.rules.split(",") if r.strip()} or None
    llm_ms = sum(costs.large_ms(tr.prompt_tokens, tr.large_tokens) for tr in traces)
    runs = []
    todo = systems(best, thresholds, targets, only)
    prog = Progress("systems", len(todo), 1)
    for i, s in enumerate(todo, start=1):
        t1 = time.perf_counter()
        res = sim.run(s)
        row = {
            "system": s.system,
            "rule": s.rule,
            "target_agreement": s.target,
            "threshold": s.threshold,
            "early_abort": s.early_abort,
            "prerouter": s.prerouter,
            **summarise(res, llm_ms, thr),
            "by_set": {
                name: summarise(
                    [r for r, tr in zip(res, traces, strict=True) if tr.set == name],
                    sum(
                        costs.large_ms(tr.prompt_tokens, tr.large_tokens)
                        for tr in traces
                        if tr.set == name
                    ),
                    thr,
                )
                for name in sorted({tr.set for tr in traces})
            },
            "seconds": round(time.perf_counter() - t1, 1),
        }
        runs.append(row)
        print(
            f"  {s.name}: acceptable {row['acceptable']} answered "
            f"{row['acceptable_answered']} llm {row['llm_share']} wall {row['wall_ratio']}",
            flush=True,
        )
        prog.update(i)
    return {
        "stream": name,
        "items": len(traces),
        "sets": dict(
            sorted({tr.set: sum(t.set == tr.set for t in traces) for tr in traces}.items())
        ),
        "order_seed": args.order_seed,
        "quality": {
            "measure": task.quality.measure,
            "threshold": thr,
            "base_rate": round(float(acceptable.mean()), 4),
        },
        "costs": costs.to_json(),
        "rules": rows,
        "best_simple_rule": best,
        "runs": runs,
        "curves": {
            k: [round(float(v), 4) for v in c[:: max(1, len(c) // 100)]] for k, c in curves.items()
        },
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, CPython {platform.python_version()}",
    }
