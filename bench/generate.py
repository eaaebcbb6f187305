"""``cascade-bench generate``: the generative cascade's operating curves on a recorded stream.

A stream of prompts from several sets (TREC questions, tweets to summarise) is recorded once
(bench/gen_data.py: the small LM's full trace, the large LM's committed answers). Every system
is then replayed over it in a seeded order with the real deferral policies learning online
(bench/gen_sim.py): the large LM alone, the small LM alone, each simple rule over thresholds
and targets, each learned rule over targets, with and without the pre-router and early abort.
Wall time comes from the small and large LM's per-token cost measured live in the same run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.flags import arg
from bench.harness import ANNOTATIONS, BenchContext, load_bench_config
from bench.streams import prompt_mix


@dataclass
class GenerateArgs:
    """``bench generate``'s arguments; each is also its flag (bench/flags.py)."""

    sets: str = arg("trec-chat:2000,tweets:1000", "prompt sets and how many of each")
    task: str = arg("chat", "the generate task whose levels, prompt and quality to use")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    seed: int = arg(42, "which prompts of each set (their seeded order)")
    order_seed: int = arg(0, "the order the stream is served in")
    limit: int | None = arg(None, "only the first N prompts of the mixed stream")
    targets: str = arg("0.7,0.75,0.8,0.85,0.9", "target_agreement values to sweep")
    rules: str = arg("", "comma-separated rule names to run (default: all)")
    timing_calls: int = arg(24, "live calls of each LM that measure their per-token cost")
    record_only: bool = arg(False, "record the traces and annotations, then stop")
    out: Path | None = arg(None, "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


def parse_sets(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, n = part.strip().partition(":")
        out[name] = int(n) if n else 1000
    return out


async def generate_bench(args: GenerateArgs) -> dict[str, Any]:
    from app.settings import Settings
    from bench.deferral_run import generate_task
    from bench.gen_data import record
    from cascade.llm_server import local_large_llm
    from cascade.quality import QualityMeasure
    from cascade.replay import ReplayFile

    settings = Settings()
    task, large_model = generate_task(args.config or settings.config_path, args.task)
    sets = parse_sets(args.sets)
    prompts = prompt_mix(settings.models_dir, sets, args.seed, args.order_seed)[: args.limit]
    name = "+".join(sets)
    replay = ReplayFile(ANNOTATIONS, write_name=f"chat.{large_model}")
    print(f"stream {name}: {len(prompts)} prompts ({args.sets})", flush=True)
    with local_large_llm(
        settings.models_dir, settings.data_dir, enabled=not settings.llm_base_url
    ) as url:
        if url:
            os.environ["LLM_BASE_URL"] = url
        config = load_bench_config(args.config or settings.config_path)
        task = config.tasks[args.task]
        ctx = BenchContext(config, settings.models_dir, replay, name)
        qc = task.quality
        embedder = ctx.pool.encoder(qc.backend) if qc.backend else None
        measure = QualityMeasure(qc.measure, qc.threshold, embedder)
        traces = await record(ctx, task, prompts, measure)
        print(f"replayed {replay.hits} large-LM answers, recorded {replay.misses}", flush=True)
        if args.record_only:
            return {"stream": name, "items": len(traces)}
        from bench.gen_sim import run_all
        from bench.gen_timing import measure_costs

        costs = await measure_costs(ctx, task, traces, args.timing_calls)
    payload = run_all(traces, task, costs, args, name)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.write_doc:
        from bench.generate_report import write_generate_report

        write_generate_report(payload, args)
    return payload
