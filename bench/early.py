"""``cascade-gateway bench early``: what a new task costs and gets over its first items.

A user who adds a task meets the cascade before it has learned anything. On each stream and
each order of its items, this runs the large LM alone, the fixed thresholds (the static
cascade, nothing learned) and the learned cascade of each configuration at each target, and
reads the first 100/150/300/1,000 items' accuracy, large-LM share and cost, and the item
from which the cumulative cost saved stays positive. ``bench/early_checks.py`` holds the
targets those figures are judged by (issue 25). Every large-LM answer is replayed from
bench/annotations, so the whole run takes minutes and needs no large LM.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.early_checks import run_checks, summary
from bench.flags import arg
from bench.stream import RunSpec, task_for, write_json
from bench.stream_figures import cumulative_saved, summarise
from bench.streams import BUILTIN, Stream, builtin, reorder, without_fuse

#: TREC's fusing cost 0.6-1.5 points on its committed curve, so its bench runs unfused
NO_FUSE = ("trec",)
CURVE_ITEMS = 300  # the cumulative-saving curve kept for the plot


@dataclass
class EarlyArgs:
    """``bench early``'s arguments; each is also its flag (bench/flags.py)."""

    streams: tuple[str, ...] = arg(BUILTIN, "built-in streams, comma-separated")
    orders: tuple[int, ...] = arg(
        (0, 1, 2), "orders of each stream: 0 is the stream's own, k reshuffles it with seed k"
    )
    limit: int = arg(1000, "items per stream (their large-LM answers are recorded)")
    configs: tuple[str, ...] = arg(
        ("deploy/config.yaml",), "configurations whose learned cascade runs, comma-separated"
    )
    task: str = arg("sentiment", "configured task whose levels and costs the streams run with")
    target_agreement: tuple[float, ...] = arg((0.85, 0.9), "targets of each learned cascade")
    thresholds: tuple[float, ...] = arg(
        (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0), "the fixed thresholds"
    )
    out: Path | None = arg(Path("bench/results/early.json"), "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


def _cumulative_saved(costs: list[float]) -> list[float]:
    return [round(float(v), 3) for v in cumulative_saved(costs)[:CURVE_ITEMS]]


def _config_name(path: str) -> str:
    return Path(path).stem


async def early_bench(args: EarlyArgs) -> dict[str, Any]:
    from app.settings import Settings
    from bench.harness import ANNOTATIONS, BenchContext, Progress, load_bench_config, run_stream
    from cascade.replay import ReplayFile

    # every answer is recorded: nothing should reach a server, and a miss fails loudly
    os.environ.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")
    models_dir = Settings().models_dir
    configs = {_config_name(p): load_bench_config(p) for p in args.configs}
    base = next(iter(configs.values()))
    n_runs = len(args.streams) * len(args.orders)
    n_runs *= 1 + len(args.thresholds) + len(configs) * len(args.target_agreement)
    overall, done = Progress("bench early", n_runs, every=1), 0
    cells: list[dict[str, Any]] = []
    for name in args.streams:
        first = builtin(name, models_dir, limit=args.limit)
        replay = ReplayFile(ANNOTATIONS, write_name=f"{first.name}.replay-only")
        # one context per configuration for all orders: its memos of the frozen models load once
        contexts = {
            c: BenchContext(cfg, models_dir, replay, first.name) for c, cfg in configs.items()
        }
        ctx = next(iter(contexts.values()))  # the baselines run on the first configuration's
        for order in args.orders:
            stream: Stream = reorder(first, order) if order else first

            def template(config: Any, stream: Stream = stream, name: str = name) -> Any:
                t = stream.task_config(config.tasks[args.task])
                return without_fuse(t) if name in NO_FUSE else t

            fixed_template = template(base)
            spec = RunSpec("llm_only")
            res = await run_stream(ctx, task_for(spec, fixed_template), stream, learn=False)
            llm_labels = [r.label for r in res]
            llm = summarise(spec, res, stream, llm_labels, {}, fixed_template.levels[-1].name)
            done += 1
            fixed = []
            for t in args.thresholds:
                spec = RunSpec("threshold", "threshold", t)
                task = task_for(spec, fixed_template)
                res = await run_stream(ctx, task, stream, learn=False, label=spec.label)
                row = summarise(spec, res, stream, llm_labels, {}, task.levels[-1].name)
                row["cumulative_saved"] = _cumulative_saved([r.cost for r in res])
                fixed.append(row)
                done += 1
            overall.update(done)
            for cname, config in configs.items():
                cctx, learned_template = contexts[cname], template(config)
                for target in args.target_agreement:
                    spec = RunSpec("cascade", "target_agreement", target)
                    task = task_for(spec, learned_template)
                    t0 = time.perf_counter()
                    res = await run_stream(cctx, task, stream, label=f"{cname} {spec.label}")
                    row = summarise(spec, res, stream, llm_labels, {}, task.levels[-1].name)
                    row["run_s"] = round(time.perf_counter() - t0, 1)
                    row["cumulative_saved"] = _cumulative_saved([r.cost for r in res])
                    cells.append(
                        {
                            "stream": name,
                            "order": order,
                            "config": cname,
                            "system": f"{cname} target {target:g}",
                            "run": row,
                            "checks": run_checks(row, llm, fixed),
                        }
                    )
                    done += 1
                    overall.update(done, **{"ok": float(cells[-1]["checks"]["ok"])})
            cells.append({"stream": name, "order": order, "llm_only": llm, "fixed": fixed})
    learned = [c for c in cells if "checks" in c]
    payload = {
        "items": args.limit,
        "streams": list(args.streams),
        "orders": list(args.orders),
        "configs": list(args.configs),
        "targets": list(args.target_agreement),
        "thresholds": list(args.thresholds),
        "no_fuse": [s for s in args.streams if s in NO_FUSE],
        "cells": cells,
        "summary": summary(learned),
    }
    if args.out is not None:
        write_json(args.out, payload)
    if args.write_doc:
        from bench.early_report import write_early_report

        write_early_report(payload)
    return payload
