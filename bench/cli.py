"""``cascade-bench`` (also ``python -m bench`` and ``cascade-gateway bench``): the benchmarks.

A subcommand's flags are the fields of its argument dataclass (bench/flags.py), imported only
when that subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.flags import LazyParser, from_flags

if TYPE_CHECKING:
    from bench.stream import StreamBenchArgs


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

    sargs = from_flags(StreamBenchArgs, args)
    if sargs.file is not None:
        sargs.stream = None  # the file is the stream
    return sargs


def cmd_deferral(args: argparse.Namespace) -> int:
    from bench.deferral_run import DeferralArgs, deferral_bench

    payload = asyncio.run(deferral_bench(from_flags(DeferralArgs, args)))
    print(json.dumps({r["rule"]: r["auc_df"] for r in payload["rules"]}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from bench.generate import GenerateArgs, generate_bench

    payload = asyncio.run(generate_bench(from_flags(GenerateArgs, args)))
    print(json.dumps({k: payload[k] for k in ("stream", "items")}))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from bench.load import LoadArgs, load_bench

    payload = load_bench(from_flags(LoadArgs, args))
    print(json.dumps(payload["overhead_at_8_connections"]))
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from bench.chaos import ChaosArgs, chaos_bench
    from bench.chaos_report import print_summary

    print_summary(chaos_bench(from_flags(ChaosArgs, args)))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from bench.tasks import TasksArgs, tasks_bench

    payload = tasks_bench(from_flags(TasksArgs, args))
    print(json.dumps({k: v for k, v in payload.items() if k != "config"}))
    return 0


def cmd_semcache(args: argparse.Namespace) -> int:
    from bench.semcache import SemcacheArgs, semcache_bench
    from bench.semcache_checks import label

    payload = asyncio.run(semcache_bench(from_flags(SemcacheArgs, args)))
    figures = {
        label(r): {
            "hit_rate": r["hit_rate"],
            "error_rate": r["error_rate"],
        }
        for r in payload["runs"]
    }
    print(json.dumps(figures))
    return 0


def cmd_semcache_sim(args: argparse.Namespace) -> int:
    from bench.semcache_sim import SemcacheSimArgs, semcache_sim

    payload = asyncio.run(semcache_sim(from_flags(SemcacheSimArgs, args)))
    print(json.dumps(payload["summary"]))
    return 0


def cmd_early(args: argparse.Namespace) -> int:
    from bench.early import EarlyArgs, early_bench

    payload = asyncio.run(early_bench(from_flags(EarlyArgs, args)))
    print(json.dumps(payload["summary"]))
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from bench.learner import LearnerArgs, learner_bench
    from bench.learner_report import checks

    payload = asyncio.run(learner_bench(from_flags(LearnerArgs, args)))
    print(json.dumps({"points": payload["points"], **checks(payload)}))
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


def cmd_stream_compare(args: argparse.Namespace) -> int:
    from bench.stream_compare import write_compare_report

    if len(args.before) != len(args.after):
        raise SystemExit("--before and --after need one file per order each, in the same order")
    pairs = list(zip(map(Path, args.before), map(Path, args.after), strict=True))
    out = Path(args.out) if args.out else None
    result = write_compare_report(pairs, args.name, args.what, args.tolerance, out)
    print(json.dumps({"mean_points": result["mean_points"], **result["mean_within_tolerance"]}))
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
        rc = main(["stream", "--stream", stream, "--out", str(out), *extra, *base])
        if rc:
            return rc
    # in-context imitation on the small level: each point is an hour here, so each its own run
    icl, results = "bench/configs/rotten-tomatoes-icl.yaml", []
    for target in ICL_TARGETS:
        results.append(f"bench/results/icl-rt5000-t{target}.json")
        stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", icl]
        knobs = ["--thresholds", "", "--mu", "", "--target-agreement", target]
        rc = main([*stream, *knobs, "--no-doc", "--out", results[-1]])
        if rc:
            return rc
    baselines = ["--baselines", "bench/results/stream-rotten-tomatoes.json"]
    if not args.no_doc:
        report = ["stream-report", "--name", "icl", "--config", icl, "--results", *results]
        rc = main([*report, *baselines])
        if rc:
            return rc
    # the small LM alone in front of the large LM: the cascade for when large-LM calls are paid
    lean, out = "bench/configs/rotten-tomatoes-lean.yaml", "bench/results/lean-rt5000.json"
    stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", lean]
    knobs = ["--thresholds", "", "--mu", "", "--target-agreement", LEAN_TARGETS]
    rc = main([*stream, *knobs, "--no-doc", "--out", out])
    if rc:
        return rc
    if not args.no_doc:
        report = ["stream-report", "--name", "lean", "--config", lean, "--results", out]
        rc = main([*report, *baselines])
        if rc:
            return rc
    # the same, serving the large LM's answer fused with the small LM's zero-shot one; its
    # baselines fuse too (the fusion belongs to the large level, whatever decides deferral)
    rc = _fused(args.no_doc)
    if rc:
        return rc
    rc = main(["deferral", "--out", "bench/results/deferral-trec-chat.json", *base])
    if rc:
        return rc
    rc = main(["semcache", "--out", "bench/results/semcache.json", *base])
    if rc:
        return rc
    rc = main(["learner", "--out", "bench/results/learner.json", *base])
    if rc:
        return rc
    rc = main(["tasks", "--out", "bench/results/tasks.json", *base])
    if rc:
        return rc
    return main(["load", "--out", "bench/results/load.json", *base])


def _fused(no_doc: bool) -> int:
    fused = "bench/configs/rotten-tomatoes-fused.yaml"
    out, baselines = "bench/results/fused-rt5000.json", "bench/results/fused-baselines-rt5000.json"
    stream = ["stream", "--stream", "rotten-tomatoes", "--limit", "5000", "--config", fused]
    runs = (
        ["--thresholds", "0.6,0.7,0.8", "--mu", "", "--target-agreement", "", "--out", baselines],
        ["--thresholds", "", "--mu", "", "--target-agreement", LEAN_TARGETS, "--out", out],
    )
    for knobs in runs:
        rc = main([*stream, *knobs, "--no-doc"])
        if rc:
            return rc
    if no_doc:
        return 0
    report = ["stream-report", "--name", "fused", "--config", fused, "--results", out]
    return main([*report, "--baselines", baselines])


def add_bench_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``bench`` and its subcommands, on another command's subcommands."""
    _add_commands(sub.add_parser("bench", help="benchmarks (write docs/BENCHMARKS.md)"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cascade-bench",
        description="The gateway's benchmarks: results in bench/results, docs/BENCHMARKS.md.",
    )
    _add_commands(p)
    return p


# subcommand: (help, "module:Dataclass" whose fields are its flags, what runs it)
COMMANDS: dict[str, tuple[str, str | None, Callable[[argparse.Namespace], int]]] = {
    "stream": (
        "online cascade learning on a labelled stream",
        "bench.stream:StreamBenchArgs",
        cmd_stream,
    ),
    "early": (
        "a new task's first items on three streams and several orders: share, accuracy, cost",
        "bench.early:EarlyArgs",
        cmd_early,
    ),
    "stream-report": (
        "one docs section from several `bench stream --out` results",
        None,
        cmd_stream_report,
    ),
    "stream-compare": (
        "one change judged on several orders of a stream (`bench stream` before and after)",
        None,
        cmd_stream_compare,
    ),
    "deferral": (
        "token-level deferral rules on a generative stream",
        "bench.deferral_run:DeferralArgs",
        cmd_deferral,
    ),
    "generate": (
        "operating curves of generative cascades on a recorded stream",
        "bench.generate:GenerateArgs",
        cmd_generate,
    ),
    "load": (
        "throughput/latency of the cache-hit and logistic paths",
        "bench.load:LoadArgs",
        cmd_load,
    ),
    "chaos": (
        "a real gateway under Redis outages and large-LM faults",
        "bench.chaos:ChaosArgs",
        cmd_chaos,
    ),
    "semcache": (
        "the semantic cache against fixed thresholds on traffic with near-repeats",
        "bench.semcache:SemcacheArgs",
        cmd_semcache,
    ),
    "semcache-sim": (
        "the semantic cache's gates on many orders of the same traffic, replayed in seconds",
        "bench.semcache_sim:SemcacheSimArgs",
        cmd_semcache_sim,
    ),
    "tasks": (
        "start-up time and memory of a gateway with many tasks on shared backends",
        "bench.tasks:TasksArgs",
        cmd_tasks,
    ),
    "learner": (
        "one learner's demonstrations per second and memory up to 200,000 of them",
        "bench.learner:LearnerArgs",
        cmd_learner,
    ),
    "all": ("run every benchmark", None, cmd_all),
}


def _add_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_cmd", required=True, parser_class=LazyParser)
    parsers = {}
    for name, (text, flags, fn) in COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=text, flags=flags)
        parsers[name].set_defaults(fn=fn)
    r = parsers["stream-report"]
    r.add_argument("--results", nargs="+", required=True, help="JSON files of a cascade variant")
    r.add_argument("--baselines", help="JSON of a run whose rows are shown beside them")
    r.add_argument("--name", required=True, help="the variant's name, e.g. icl")
    r.add_argument("--config", help="the configuration those runs used (for the record)")
    c = parsers["stream-compare"]
    c.add_argument("--before", nargs="+", required=True, help="JSON per order, before the change")
    c.add_argument("--after", nargs="+", required=True, help="JSON per order, after it")
    c.add_argument("--name", required=True, help="the comparison's name (docs section, PNG)")
    c.add_argument("--what", default="", help="a sentence on the change, for the docs")
    c.add_argument("--tolerance", type=float, default=0.3, help="points the mean may move")
    c.add_argument("--out", help="write the comparison's JSON here")
    parsers["all"].add_argument(
        "--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)
