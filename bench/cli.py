"""``cascade-gateway bench ...`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.stream import StreamBenchArgs


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from None


def cmd_stream(args: argparse.Namespace) -> int:
    from bench.stream import stream_bench

    payload = asyncio.run(stream_bench(stream_args(args)))
    best = [r for r in payload["runs"] if r["system"] == "cascade"]
    print(
        json.dumps(
            {"stream": payload["stream"], "items": payload["items"], "cascade_runs": len(best)},
            indent=None,
        )
    )
    return 0


def stream_args(args: argparse.Namespace) -> StreamBenchArgs:
    """The parsed ``bench stream`` command line as the benchmark's own arguments."""
    from bench.stream import StreamBenchArgs

    if args.file is None and args.stream is None:
        args.stream = "rotten-tomatoes"
    sargs = StreamBenchArgs(
        stream=args.stream,
        file=Path(args.file) if args.file else None,
        text_field=args.text_field,
        label_field=args.label_field,
        labels=args.labels.split(",") if args.labels else None,
        prompt=args.prompt,
        system_prompt=args.system_prompt,
        task=args.task,
        config=Path(args.config) if args.config else None,
        limit=args.limit,
        seed=args.seed,
        order_seed=args.order_seed,
        distill_n=args.distill_n,
        out=Path(args.out) if args.out else None,
        timing=not args.no_timing,
        write_doc=not args.no_doc,
        url=args.url,
        large_level=args.large_level,
        fuse=not args.no_fuse,
    )
    if args.mu is not None:
        sargs.mu = args.mu
    if args.target_agreement is not None:
        sargs.target_agreement = args.target_agreement
    if args.thresholds is not None:
        sargs.thresholds = args.thresholds
    if args.cascade_thresholds is not None:
        sargs.cascade_thresholds = args.cascade_thresholds
    return sargs


def cmd_deferral(args: argparse.Namespace) -> int:
    from bench.deferral_run import DeferralArgs, deferral_bench

    dargs = DeferralArgs(
        file=Path(args.file) if args.file else None,
        text_field=args.text_field,
        task=args.task,
        config=Path(args.config) if args.config else None,
        limit=args.limit,
        seed=args.seed,
        router_threshold=args.router_threshold,
        out=Path(args.out) if args.out else None,
        write_doc=not args.no_doc,
    )
    payload = asyncio.run(deferral_bench(dargs))
    print(json.dumps({r["rule"]: r["auc_df"] for r in payload["rules"]}))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from bench.load import LoadArgs, load_bench

    largs = LoadArgs(
        duration_s=args.duration,
        redis_url=args.redis_url,
        out=Path(args.out) if args.out else None,
        write_doc=not args.no_doc,
    )
    if args.workers:
        largs.workers = tuple(int(x) for x in args.workers)
    if args.connections:
        largs.connections = tuple(int(x) for x in args.connections)
    payload = load_bench(largs)
    print(json.dumps(payload["overhead_at_8_connections"]))
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from bench.chaos import ChaosArgs, chaos_bench
    from bench.chaos_report import print_summary

    cargs = ChaosArgs(
        phase_s=args.phase_s,
        clients=args.clients,
        seed=args.seed,
        out=Path(args.out),
        records=Path(args.records) if args.records else None,
        write_doc=not args.no_doc,
    )
    payload = chaos_bench(cargs)
    print_summary(payload)
    return 0


def cmd_stream_report(args: argparse.Namespace) -> int:
    from bench.stream_report import write_combined_report

    payload = write_combined_report(
        [Path(p) for p in args.results],
        Path(args.baselines) if args.baselines else None,
        args.name,
        args.config,
    )
    print(json.dumps([[r["system"], r["accuracy"], r["llm_share"]] for r in payload["runs"]]))
    return 0


ICL_TARGETS = ("0.85", "0.92")
LEAN_TARGETS = "0.8,0.82,0.84,0.86,0.88,0.9,0.91,0.92,0.93"


def cmd_all(args: argparse.Namespace) -> int:
    """Every benchmark, rewriting docs/BENCHMARKS.md (``make bench``)."""
    base = ["--no-doc"] if args.no_doc else []
    for stream, limit in (("rotten-tomatoes", 5000), ("trec", 1000)):
        out = Path("bench/results") / f"stream-{stream}.json"
        extra = ["--task", "sentiment", "--limit", str(limit)]
        if stream == "trec":  # fusing was measured on sentiment; on TREC it cost 0.6-1.5 points
            extra.append("--no-fuse")
        rc = main_bench(["stream", "--stream", stream, "--out", str(out), *extra, *base])
        if rc:
            return rc
    # in-context imitation on the small level: each point is an hour here, so each its own run
    icl, results = "bench/configs/rotten-tomatoes-icl.yaml", []
    for target in ICL_TARGETS:
        results.append(f"bench/results/icl-rt5000-t{target}.json")
        stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", icl]
        knobs = ["--thresholds", "", "--mu", "", "--target-agreement", target]
        rc = main_bench([*stream, *knobs, "--no-doc", "--out", results[-1]])
        if rc:
            return rc
    baselines = ["--baselines", "bench/results/stream-rotten-tomatoes.json"]
    if not args.no_doc:
        report = ["stream-report", "--name", "icl", "--config", icl, "--results", *results]
        rc = main_bench([*report, *baselines])
        if rc:
            return rc
    # the small LM alone in front of the large LM: the cascade for when large-LM calls are paid
    lean, out = "bench/configs/rotten-tomatoes-lean.yaml", "bench/results/lean-rt5000.json"
    stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", lean]
    knobs = ["--thresholds", "", "--mu", "", "--target-agreement", LEAN_TARGETS]
    rc = main_bench([*stream, *knobs, "--no-doc", "--out", out])
    if rc:
        return rc
    if not args.no_doc:
        report = ["stream-report", "--name", "lean", "--config", lean, "--results", out]
        rc = main_bench([*report, *baselines])
        if rc:
            return rc
    # the same, serving the large LM's answer fused with the small LM's zero-shot one; its
    # baselines fuse too (the fusion belongs to the large level, whatever decides deferral)
    rc = _fused(args.no_doc)
    if rc:
        return rc
    rc = main_bench(["deferral", "--out", "bench/results/deferral-trec-chat.json", *base])
    if rc:
        return rc
    return main_bench(["load", "--out", "bench/results/load.json", *base])


def _fused(no_doc: bool) -> int:
    fused = "bench/configs/rotten-tomatoes-fused.yaml"
    out, baselines = "bench/results/fused-rt5000.json", "bench/results/fused-baselines-rt5000.json"
    stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", fused]
    runs = (
        ["--thresholds", "0.6,0.7,0.8", "--mu", "", "--target-agreement", "", "--out", baselines],
        ["--thresholds", "", "--mu", "", "--target-agreement", LEAN_TARGETS, "--out", out],
    )
    for knobs in runs:
        rc = main_bench([*stream, *knobs, "--no-doc"])
        if rc:
            return rc
    if no_doc:
        return 0
    report = ["stream-report", "--name", "fused", "--config", fused, "--results", out]
    return main_bench([*report, "--baselines", baselines])


def add_bench_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    b = sub.add_parser("bench", help="benchmarks (write docs/BENCHMARKS.md)")
    bsub = b.add_subparsers(dest="bench_cmd", required=True)
    _add_stream(bsub)
    r = bsub.add_parser(
        "stream-report", help="one docs section from several `bench stream --out` results"
    )
    r.add_argument("--results", nargs="+", required=True, help="JSON files of a cascade variant")
    r.add_argument("--baselines", help="JSON of a run whose rows are shown beside them")
    r.add_argument("--name", required=True, help="the variant's name, e.g. icl")
    r.add_argument("--config", help="the configuration those runs used (for the record)")
    r.set_defaults(fn=cmd_stream_report)
    d = bsub.add_parser("deferral", help="token-level deferral rules on a generative stream")
    d.add_argument("--file", help="CSV/JSONL of prompts (default: TREC questions)")
    d.add_argument("--text-field", default="text")
    d.add_argument("--task", default="chat", help="the generate task to run (its levels)")
    d.add_argument("--config")
    d.add_argument("--limit", type=int, default=1000)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--router-threshold", type=float, default=0.25)
    d.add_argument("--out")
    d.add_argument("--no-doc", action="store_true")
    d.set_defaults(fn=cmd_deferral)
    lo = bsub.add_parser("load", help="throughput/latency of the cache-hit and logistic paths")
    lo.add_argument("--duration", type=int, default=5, help="seconds per point")
    lo.add_argument("--workers", type=_floats, help="e.g. 1,2,4")
    lo.add_argument("--connections", type=_floats, help="e.g. 1,8,64")
    lo.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    lo.add_argument("--out")
    lo.add_argument("--no-doc", action="store_true")
    lo.set_defaults(fn=cmd_load)
    ch = bsub.add_parser("chaos", help="a real gateway under Redis outages and large-LM faults")
    ch.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase (10 phases)")
    ch.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--out", default="bench/results/chaos.json")
    ch.add_argument("--records", help="also write every request as JSON lines to this file")
    ch.add_argument("--no-doc", action="store_true")
    ch.set_defaults(fn=cmd_chaos)
    a = bsub.add_parser("all", help="run every benchmark")
    a.add_argument("--no-doc", action="store_true")
    a.set_defaults(fn=cmd_all)


def _add_stream(bsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = bsub.add_parser("stream", help="online cascade learning on a labelled stream")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--stream", choices=["rotten-tomatoes", "trec"], help="built-in stream")
    src.add_argument("--file", help="your own CSV or JSONL stream")
    s.add_argument("--text-field", default="text")
    s.add_argument("--label-field", default="label")
    s.add_argument("--labels", help="comma-separated label set (default: those in the file)")
    s.add_argument("--prompt", help="user prompt template with {input} (with --file)")
    s.add_argument("--system-prompt", help="system prompt (with --file)")
    s.add_argument(
        "--task",
        default="sentiment",
        help="configured task whose levels and costs the stream runs with",
    )
    s.add_argument("--config", help="configuration file (default: deploy/config.yaml)")
    s.add_argument(
        "--no-fuse",
        action="store_true",
        help="serve the large LM's own answers even where the task fuses (params.fuse): "
        "measure a stream with and without",
    )
    s.add_argument("--limit", type=int, default=5000)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument(
        "--order-seed",
        type=int,
        help="replay the same items (--seed, --limit) in another seeded order: measures how "
        "much a sweep point moves with the order alone, with the recorded large-LM answers",
    )
    s.add_argument("--mu", type=_floats, help="mu values to sweep, e.g. 0,0.01,0.1")
    s.add_argument("--target-agreement", type=_floats, help="targets to sweep, e.g. 0.9,0.95")
    s.add_argument("--thresholds", type=_floats, help="thresholds for the baselines")
    s.add_argument(
        "--cascade-thresholds",
        type=_floats,
        help="also run the learning cascade with these static thresholds",
    )
    s.add_argument("--distill-n", type=int, help="labels for distillation (default: 10%%)")
    s.add_argument(
        "--url",
        help="drive a running gateway over HTTP (e.g. http://127.0.0.1:8000) instead of "
        "in-process; API key from CASCADE_API_KEY",
    )
    s.add_argument("--large-level", default="large", help="with --url: the last level's name")
    s.add_argument("--out", help="write the JSON results here")
    s.add_argument("--no-timing", action="store_true", help="skip the live per-level timing")
    s.add_argument("--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    s.set_defaults(fn=cmd_stream)


def main_bench(argv: list[str]) -> int:
    from app.cli import main

    return main(["bench", *argv])
