"""Running the deferral benchmark: collect answers, score the rules, measure the pre-router."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.deferral import best_simple, rule_rows
from bench.flags import arg
from bench.harness import (
    ANNOTATIONS,
    BenchContext,
    Progress,
    load_bench_config,
    quiet_llama,
    run_stream,
)
from bench.streams import Item, Stream, trec_questions
from cascade.config import LevelConfig, TaskConfig
from cascade.levels import Query, build_level
from cascade.quality import QualityMeasure
from cascade.runtime import features_of


@dataclass
class DeferralArgs:
    """``bench deferral``'s arguments; each is also its flag (bench/flags.py)."""

    file: Path | None = arg(None, "CSV/JSONL of prompts (default: TREC questions)")
    text_field: str = arg("text")
    task: str = arg("chat", "the generate task to run (its levels)")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    limit: int = arg(1000)
    seed: int = arg(42)
    router_threshold: float = arg(0.25)
    out: Path | None = arg(None, "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


def load_prompts(args: DeferralArgs, models_dir: Path, task: TaskConfig) -> Stream:
    if args.file is not None:
        from bench.streams import from_file

        return from_file(
            args.file, args.text_field, None, None, task.prompt, seed=args.seed, limit=args.limit
        )
    items = [Item(it.text, None) for it in trec_questions(models_dir, args.seed, args.limit)]
    return Stream("trec-chat", items, [], task.prompt)


def _level(task: TaskConfig, name: str) -> LevelConfig:
    return next(lc for lc in task.levels if lc.name == name)


async def collect(
    ctx: BenchContext, task: TaskConfig, stream: Stream, small: str
) -> tuple[list[Any], list[str]]:
    """The small level's outputs (with features) and the large LM's answers, per item."""
    with quiet_llama():
        small_level = build_level(_level(task, small), task, ctx.pool)
        large_level = build_level(task.levels[-1], task, ctx.pool)
    outs, large = [], []
    prog = Progress("answers", len(stream.items), 50)
    for i, it in enumerate(stream.items, start=1):
        q = Query("bench", it.text, _messages(task, it.text), task.max_tokens)
        outs.append(await small_level.predict(q))
        large.append((await large_level.predict(q)).text)
        prog.update(i)
    return outs, large


def _messages(task: TaskConfig, text: str) -> list[dict[str, str]]:
    from cascade.prompts import render_messages

    return render_messages(task.prompt, text)


def router_task(task: TaskConfig, small: str, threshold: float, embed: str | None) -> TaskConfig:
    """The same cascade with a pre-router in front of the small LM."""
    router = LevelConfig.model_validate(
        {
            "name": "router",
            "kind": "router",
            "cost": 0.0001,
            "params": {"embed": embed} if embed else {},
            "policy": {"kind": "threshold", "threshold": threshold},
        }
    )
    levels = list(task.levels)
    i = [lc.name for lc in levels].index(small)
    return task.model_copy(update={"levels": [*levels[:i], router, *levels[i:]]})


def cascade_quality(
    results: list[Any], large: list[str], quality: QualityMeasure, large_name: str
) -> np.ndarray:
    q = np.ones(len(results))
    idx = [i for i, r in enumerate(results) if r.level != large_name and not r.error]
    if idx:
        q[idx] = quality.scores([results[i].output for i in idx], [large[i] for i in idx])
    return q


def generate_task(config_path: Path, name: str) -> tuple[TaskConfig, str]:
    """The generate task ``name`` of a configuration, and its large LM's model name (which
    names the annotation file its answers are recorded in)."""
    from cascade.config import load_config

    base = load_config(config_path)
    task = base.tasks[name]
    if task.kind != "generate":
        raise ValueError(f"task {name!r} is not a generate task")
    return task, getattr(base.backends[task.levels[-1].backend or ""], "model", "large")


async def deferral_bench(args: DeferralArgs) -> dict[str, Any]:
    from app.settings import Settings
    from cascade.llm_server import local_large_llm
    from cascade.replay import ReplayFile

    settings = Settings()
    task, large_model = generate_task(args.config or settings.config_path, args.task)
    stream = load_prompts(args, settings.models_dir, task)
    replay = ReplayFile(ANNOTATIONS, write_name=f"{stream.name}.{large_model}")
    need_server = not settings.llm_base_url
    print(f"stream {stream.name}: {len(stream.items)} prompts", flush=True)
    with local_large_llm(settings.models_dir, settings.data_dir, enabled=need_server) as url:
        if url:
            os.environ["LLM_BASE_URL"] = url
        config = load_bench_config(args.config or settings.config_path)
        task = config.tasks[args.task]
        ctx = BenchContext(config, settings.models_dir, replay, stream.name)
        small = task.levels[-2].name
        qc = task.quality
        embedder = ctx.pool.encoder(qc.backend) if qc.backend else None
        measure = QualityMeasure(qc.measure, qc.threshold, embedder)
        outs, large = await collect(ctx, task, stream, small)
        feats = [features_of(o, []) for o in outs]
        quality = measure.scores([o.text for o in outs], large)
        acceptable = quality >= qc.threshold
        rows, curves = rule_rows(feats, quality, acceptable, args.seed)
        seconds = await _level_seconds(ctx, task, stream, small)
        prerouter = await _prerouter(ctx, task, stream, small, large, measure, seconds, args)
    payload = {
        "stream": stream.name,
        "items": len(stream.items),
        "quality": {
            "measure": qc.measure,
            "threshold": qc.threshold,
            "base_rate": round(float(acceptable.mean()), 4),
        },
        "seconds_per_call": seconds,
        "rules": rows,
        "best_simple_rule": best_simple(rows)["rule"],
        "prerouter": prerouter,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.write_doc:
        from bench.deferral_report import write_deferral_report

        write_deferral_report(payload, curves, args)
    return payload


async def _level_seconds(
    ctx: BenchContext, task: TaskConfig, stream: Stream, small: str, n: int = 6
) -> dict[str, float]:
    """Live seconds per call of the small and the large LM (memo and replay bypassed)."""
    from cascade.backends.openai_http import OpenAIBackend

    out: dict[str, float] = {}
    texts = [it.text for it in stream.items[-n:]]
    llama = ctx.pool.llama(_level(task, small).backend or "")
    raw = getattr(llama, "backend", llama)
    t0 = time.perf_counter()
    for t in texts:
        raw.generate(_messages(task, t), task.max_tokens)
    out[small] = (time.perf_counter() - t0) / n
    big = ctx.pool.openai(task.levels[-1].backend or "")
    assert isinstance(big, OpenAIBackend)
    saved, big.cache = big.cache, None
    t0 = time.perf_counter()
    for t in texts:
        # as the cascade calls it: a final answer asks for no log-probs (they cost ~3x here)
        await big.generate(_messages(task, t), task.max_tokens, logprobs=False)
    big.cache = saved
    out[task.levels[-1].name] = (time.perf_counter() - t0) / n
    return out


async def _prerouter(
    ctx: BenchContext,
    task: TaskConfig,
    stream: Stream,
    small: str,
    large: list[str],
    measure: QualityMeasure,
    seconds: dict[str, float],
    args: DeferralArgs,
) -> dict[str, Any]:
    """The cascade as configured, then with a pre-router: cost and quality of both."""
    large_name = task.levels[-1].name
    embed = getattr(_level(task, small).params, "embed", None)
    # the configured task may have a router already: compare it bare, and with one router
    bare = task.model_copy(update={"levels": [lc for lc in task.levels if lc.kind != "router"]})
    variants = {"without": bare, "with": router_task(bare, small, args.router_threshold, embed)}
    out: dict[str, Any] = {"router_threshold": args.router_threshold}
    for name, t in variants.items():
        res = await run_stream(ctx, t, stream, label=f"cascade {name} pre-router")
        q = cascade_quality(res, large, measure, large_name)
        wall = sum(sum(seconds.get(lv, 0.0) for lv in r.levels_run) for r in res)
        out[name] = {
            "quality": round(float(q.mean()), 4),
            "acceptable": round(float((q >= measure.threshold).mean()), 4),
            "llm_share": round(float(np.mean([r.llm_called for r in res])), 4),
            "small_share": round(float(np.mean([small in r.levels_run for r in res])), 4),
            "cost_ratio": round(float(np.mean([r.cost for r in res])), 4),
            "wall_ratio": round(wall / (len(res) * seconds[large_name]), 4),
        }
    w, wo = out["with"], out["without"]
    out["cost_saved"] = round(1 - w["cost_ratio"] / wo["cost_ratio"], 4)
    out["wall_saved"] = round(1 - w["wall_ratio"] / wo["wall_ratio"], 4)
    out["quality_delta"] = round(w["quality"] - wo["quality"], 4)
    return out
