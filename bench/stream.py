"""``cascade-gateway bench stream``: online cascade learning on a labelled stream.

Systems, all on the same stream in the same order:
- ``llm_only``: the large LM answers everything (the quality reference, cost 1 per item);
- ``threshold``: the static cascade: zero-shot small LM, untrained cheap levels, confidence
  thresholds, no learning (swept over thresholds);
- ``distill``: the first N items go to the large LM; the cheap levels are trained offline on
  those N labels, then frozen behind confidence thresholds (swept);
- ``cascade``: ours: every level and policy learns online from the large LM's answers
  (swept over mu, or over target_agreement).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.flags import arg
from bench.harness import BenchContext, run_stream
from bench.stream_figures import summarise
from bench.streams import BUILTIN, Stream, without_fuse
from cascade.config import LevelConfig, TaskConfig, ThresholdPolicyConfig


@dataclass
class RunSpec:
    system: str  # cascade | llm_only | threshold | distill | gateway (over HTTP)
    knob: str | None = None  # "mu" | "target_agreement" | "threshold"
    value: float | None = None

    @property
    def label(self) -> str:
        return self.system if self.knob is None else f"{self.system} {self.knob}={self.value:g}"


def _with_policy(lc: LevelConfig, policy: dict[str, Any] | ThresholdPolicyConfig) -> LevelConfig:
    return LevelConfig.model_validate({**lc.model_dump(), "policy": policy})


def task_for(spec: RunSpec, template: TaskConfig) -> TaskConfig:
    """The task configuration a system runs with, derived from the configured cascade."""
    levels = list(template.levels)
    large = levels[-1]
    if spec.system == "llm_only":
        return template.model_copy(update={"levels": [large]})
    cheap = levels[:-1]
    if spec.system in ("threshold", "distill"):
        t = float(spec.value if spec.value is not None else 0.9)
        pol = {"kind": "threshold", "threshold": t}
        if spec.system == "threshold":  # no learning: only zero-shot levels can answer
            cheap = [lc for lc in cheap if lc.kind in ("local_lm", "openai")]
            cheap = [
                LevelConfig.model_validate(
                    {
                        **lc.model_dump(),
                        "params": lc.params.model_dump(exclude={"probe"}),
                    }
                )
                for lc in cheap
            ]
        return template.model_copy(
            update={"levels": [_with_policy(lc, pol) for lc in cheap] + [large]}
        )
    # ours: keep each level's configured policy, set the swept knob on learned ones
    out = []
    for i, lc in enumerate(cheap):
        pol = lc.policy.model_dump(exclude_none=True)
        if spec.knob == "mu":  # the paper's policy, on the same (learning) levels
            pol = {"kind": "ocl", "mu": spec.value, "extras": ["agree_prev", "zs_agree"]}
        elif spec.knob == "target_agreement":
            # the sweep moves the last cheap level's target (the small LM's), and never lowers
            # the cheaper levels' own, stricter ones (they answer only when nearly sure)
            own = pol.get("target_agreement") or 0.0
            pol["target_agreement"] = (
                spec.value if i == len(cheap) - 1 else max(spec.value or 0.0, own)
            )
        elif spec.knob == "threshold" and pol.get("kind") == "threshold":
            pol.pop("target_agreement", None)  # learned levels, static thresholds
            pol["threshold"] = spec.value
        out.append(_with_policy(lc, pol))
    return template.model_copy(update={"levels": [*out, large]})


async def measure_level_seconds(
    ctx: BenchContext,
    task: TaskConfig,
    stream: Stream,
    llm_labels: list[str | None] | None = None,
    n: int = 12,
) -> dict[str, float]:
    """Mean wall seconds of one call per level, measured live in this run (memo and replay
    bypassed) on items from the end of the stream.

    Levels run in cascade order on the same queries, so a level reuses what a cheaper one left
    (the prompt embedding), as in a walk. A level that imitates in context is timed with its
    index filled from the earlier items' large-LM answers: with an empty index it would be
    timed on its (much shorter) zero-shot prompt."""
    from cascade.levels import Query, build_level
    from cascade.levels.lm import LocalLMLevel, OpenAILevel
    from cascade.prompts import render_messages

    def queries(texts: list[str]) -> list[Query]:
        return [Query("bench", t, render_messages(task.prompt, t), task.max_tokens) for t in texts]

    timed, warm = queries([it.text for it in stream.items[-n:]]), queries([stream.items[0].text])
    encoder: Any = None
    out: dict[str, float] = {}
    for lc in task.levels:
        level = build_level(lc, task, ctx.pool)
        if isinstance(level, LocalLMLevel) and level.backend is not None:
            level.backend = getattr(level.backend, "backend", level.backend)
        if getattr(level, "encoder", None) is not None:
            level.encoder = getattr(level.encoder, "backend", level.encoder)
            encoder = encoder or level.encoder
        if isinstance(level, LocalLMLevel) and level.icl_k and llm_labels and encoder:
            _fill_icl_index(level, encoder, stream, llm_labels, n)
        saved = None
        if isinstance(level, OpenAILevel):
            saved, level.backend.cache = level.backend.cache, None
        await level.predict(warm[0])
        t0 = time.perf_counter()
        for q in timed:
            await level.predict(q)
        out[lc.name] = (time.perf_counter() - t0) / len(timed)
        if isinstance(level, OpenAILevel):
            level.backend.cache = saved
    return out


def _fill_icl_index(
    level: Any, encoder: Any, stream: Stream, llm_labels: list[str | None], skip_last: int
) -> None:
    """What the level's index holds after a long stream: the newest large-LM answers."""
    pairs = list(zip(stream.items[:-skip_last], llm_labels[:-skip_last], strict=True))
    pairs = [(it.text, lab) for it, lab in pairs if lab in level.labels][-level.index.capacity :]
    texts = [t for t, _ in pairs]
    level.index.add(encoder.embed(texts), texts, [level.labels.index(lab) for _, lab in pairs])


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


@dataclass
class StreamBenchArgs:
    """``bench stream``'s arguments; each is also its flag (bench/flags.py)."""

    stream: str | None = arg("rotten-tomatoes", "built-in stream", choices=BUILTIN, exclusive="src")
    file: Path | None = arg(None, "your own CSV or JSONL stream", exclusive="src")
    text_field: str = arg("text")
    label_field: str | None = arg("label")
    labels: list[str] | None = arg(None, "comma-separated label set (default: those in the file)")
    prompt: str | None = arg(None, "user prompt template with {input} (with --file)")
    system_prompt: str | None = arg(None, "system prompt (with --file)")
    task: str = arg("sentiment", "configured task whose levels and costs the stream runs with")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    limit: int | None = arg(5000)
    seed: int = arg(42)
    order_seed: int | None = arg(
        None,
        "replay the same items (--seed, --limit) in another seeded order: measures how much a "
        "sweep point moves with the order alone, with the recorded large-LM answers",
    )
    mu: tuple[float, ...] = arg(
        (0.0, 0.003, 0.01, 0.03, 0.1, 0.3), "mu values to sweep, e.g. 0,0.01,0.1"
    )
    target_agreement: tuple[float, ...] = arg(
        (0.9, 0.93, 0.95, 0.97, 0.99), "targets to sweep, e.g. 0.9,0.95"
    )
    thresholds: tuple[float, ...] = arg(
        (0.6, 0.7, 0.8, 0.9, 0.95, 0.99), "thresholds for the baselines"
    )
    cascade_thresholds: tuple[float, ...] = arg(
        (), "also run the learning cascade with these static thresholds"
    )
    distill_n: int | None = arg(None, "labels for distillation (default: 10%%)")
    out: Path | None = arg(None, "write the JSON results here")
    timing: bool = arg(True, "skip the live per-level timing")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")
    url: str | None = arg(
        None,
        "drive a running gateway over HTTP (e.g. http://127.0.0.1:8000) instead of "
        "in-process; API key from CASCADE_API_KEY",
    )
    large_level: str = arg("large", "with --url: the last level's name")
    fuse: bool = arg(
        True,
        "serve the large LM's own answers even where the task fuses (params.fuse): "
        "measure a stream with and without",
    )


def load_stream(args: StreamBenchArgs, models_dir: Path) -> Stream:
    stream = _load_stream(args, models_dir)
    if args.order_seed is not None:
        from bench.streams import reorder

        stream = reorder(stream, args.order_seed)
    return stream


def _load_stream(args: StreamBenchArgs, models_dir: Path) -> Stream:
    from bench.streams import builtin, from_file
    from cascade.config import PromptConfig

    if args.file is not None:
        prompt = PromptConfig(system=args.system_prompt, user=args.prompt or "{input}")
        return from_file(
            args.file,
            args.text_field,
            args.label_field,
            args.labels,
            prompt,
            seed=args.seed,
            limit=args.limit,
        )
    assert args.stream is not None
    return builtin(args.stream, models_dir, seed=args.seed, limit=args.limit)


async def stream_bench(args: StreamBenchArgs) -> dict[str, Any]:
    """Run every system on the stream; write JSON, the docs section and the plot."""
    import os

    from app.settings import Settings
    from bench.harness import ANNOTATIONS, Progress, load_bench_config, quiet_llama
    from cascade.config import load_config
    from cascade.llm_server import local_large_llm
    from cascade.replay import ReplayFile

    settings = Settings()
    models_dir = settings.models_dir
    stream = load_stream(args, models_dir)
    if len(stream.labels) < 2:
        raise ValueError("the stream needs at least two labels (--labels or a label field)")
    if args.url:
        return await _over_http(args, stream)
    base = load_config(args.config or settings.config_path)
    template = stream.task_config(base.tasks[args.task])
    replay = ReplayFile(ANNOTATIONS, write_name=f"{stream.name}.{_large_model(base, template)}")
    if args.distill_n is None:
        args.distill_n = max(50, len(stream.items) // 10)
    missing = _missing_answers(base, template, stream, replay)
    need_server = (missing > 0 or args.timing) and not settings.llm_base_url
    print(
        f"stream {stream.name}: {len(stream.items)} items, {len(stream.labels)} labels; "
        f"{len(stream.items) - missing} large-LM answers recorded, {missing} to compute",
        flush=True,
    )
    with local_large_llm(models_dir, settings.data_dir, enabled=need_server) as url:
        if url:
            os.environ["LLM_BASE_URL"] = url
        elif not settings.llm_base_url:
            # every answer is recorded: nothing should reach a server, and a miss fails loudly
            os.environ["LLM_BASE_URL"] = "http://127.0.0.1:9/v1"
        config = load_bench_config(args.config or settings.config_path)
        template = stream.task_config(config.tasks[args.task])
        if not args.fuse:
            template = without_fuse(template)
        ctx = BenchContext(config, models_dir, replay, stream.name)
        rows: list[dict[str, Any]] = []
        llm_name = template.levels[-1].name

        spec = RunSpec("llm_only")
        res = await run_stream(ctx, task_for(spec, template), stream, learn=False, label=spec.label)
        llm_labels = [r.label for r in res]
        seconds: dict[str, float] = {}
        if args.timing:
            with quiet_llama():
                seconds = await measure_level_seconds(ctx, template, stream, llm_labels)
            print("seconds per call: " + ", ".join(f"{k} {v:.4f}" for k, v in seconds.items()))
        rows.append(summarise(spec, res, stream, llm_labels, seconds, llm_name))

        specs = [RunSpec("threshold", "threshold", t) for t in args.thresholds]
        specs += [RunSpec("distill", "threshold", t) for t in args.thresholds]
        specs += [RunSpec("cascade", "mu", m) for m in args.mu]
        specs += [RunSpec("cascade", "threshold", t) for t in args.cascade_thresholds]
        specs += [RunSpec("cascade", "target_agreement", t) for t in args.target_agreement]
        overall = Progress("bench stream", len(specs), every=1)
        for n, spec in enumerate(specs, start=1):
            task = task_for(spec, template)
            t0 = time.perf_counter()
            if spec.system == "threshold":
                res = await run_stream(ctx, task, stream, learn=False, label=spec.label)
            elif spec.system == "distill":
                res = await run_stream(
                    ctx,
                    task,
                    stream,
                    freeze_after=args.distill_n,
                    then_threshold=spec.value,
                    label=spec.label,
                )
            else:
                res = await run_stream(
                    ctx, task, stream, label=spec.label, learner_stats=(ls := {})
                )
            row = summarise(spec, res, stream, llm_labels, seconds, llm_name)
            row["run_s"] = round(time.perf_counter() - t0, 1)
            if spec.system == "cascade" and ls.get("seconds"):
                # demonstrations the learner absorbs per second of its own work
                row["learner_demos_per_s"] = round(ls["demos"] / ls["seconds"], 1)
            rows.append(row)
            overall.update(n, acc=row["accuracy"], llm_share=row["llm_share"])
    payload = {
        "stream": stream.name,
        "items": len(stream.items),
        "labels": stream.labels,
        "seed": args.seed,
        "order_seed": args.order_seed,
        "seconds_per_call": seconds,
        "large_level": llm_name,
        "fuse": template.fuse_names(),  # levels fused into the large LM's answers
        "distill_n": args.distill_n,
        "runs": rows,
    }
    if args.out is not None:
        write_json(args.out, payload)
    if args.write_doc:
        from bench.stream_report import write_stream_report

        write_stream_report(payload, args)
    return payload


async def _over_http(args: StreamBenchArgs, stream: Stream) -> dict[str, Any]:
    from bench.stream_http import run_stream_http

    assert args.url is not None
    print(f"stream {stream.name}: {len(stream.items)} items to {args.url}", flush=True)
    res = await run_stream_http(args.url, args.task, stream, args.large_level)
    payload = {
        "stream": stream.name,
        "items": len(stream.items),
        "labels": stream.labels,
        "seed": args.seed,
        "runs": [
            {
                **summarise(RunSpec("gateway"), res, stream, None, {}, args.large_level),
                "url": args.url,
            }
        ],
    }
    if args.out is not None:
        write_json(args.out, payload)
    return payload


def _large_model(config: Any, task: TaskConfig) -> str:
    backend = config.backends[task.levels[-1].backend]
    return str(getattr(backend, "model", task.levels[-1].name))


def _missing_answers(config: Any, task: TaskConfig, stream: Stream, replay: Any) -> int:
    """How many large-LM answers the stream needs that are not recorded yet."""
    from cascade.backends.openai_http import CLASSIFY_TOP_LOGPROBS, OpenAIBackend, payload_key
    from cascade.prompts import render_messages

    cfg = config.backends[task.levels[-1].backend]
    if cfg.kind != "openai":
        return 0
    probe = OpenAIBackend(
        "http://unused.invalid/v1", cfg.model, logprobs=cfg.logprobs, top_logprobs=cfg.top_logprobs
    )
    missing = 0
    for it in stream.items:
        payload = probe._base_payload(
            render_messages(task.prompt, it.text), 1, 0.0, CLASSIFY_TOP_LOGPROBS
        )
        if replay._index.get((cfg.model, payload_key(payload))) is None:
            missing += 1
    return missing
