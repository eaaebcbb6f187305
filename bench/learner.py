"""``bench learner``: how fast one learner takes demonstrations, and whether that holds as
they accumulate over months of traffic.

The demonstrations are real. Every item of the committed Rotten Tomatoes and TREC streams is
run once through the configuration's classify cascade with every cheap level deferring, while
a learner learns from them: each item becomes a demonstration carrying every cheap level's
prediction and features (the prompt embedding, the small LM's hidden state) from levels that
learn as they would in a deployment, and the large LM's recorded answer. That corpus (about
11,000 demonstrations, kept under ``bench/cache/``, rebuilt when the configuration changes)
is then fed to a fresh learner over Redis, over and over with fresh request ids, until it has
taken ``--total``. The bench appends ahead of the learner (untimed) and times only the
learner's own steps: read, parse, learn, publish a version, acknowledge, exactly what
``cascade-gateway learn`` runs. At each checkpoint it reports the rate over the last stretch
before it (the last fifth, at least 500) and the process's resident memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.flags import arg

#: The streams whose recorded large-LM answers make the corpus, each as many items as are
#: recorded (seed 42's order, as ``bench stream`` draws them); TREC runs without fusing, as
#: ``bench all`` runs it.
STREAMS = {"rotten-tomatoes": 10_000, "trec": 1_000}


@dataclass
class LearnerArgs:
    """``bench learner``'s arguments; each is also its flag."""

    total: int = arg(200_000, "demonstrations to feed the learner in all")
    checkpoints: tuple[int, ...] = arg(
        (1_000, 10_000, 50_000, 100_000, 200_000), "report throughput and memory at these counts"
    )
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    task: str = arg("sentiment", "the configured classify task whose levels every stream uses")
    redis_url: str = arg("redis://127.0.0.1:6379/0", "the Redis the learner reads from")
    stream_cap: int = arg(20_000, "MAXLEN of the bench's demonstration streams in Redis")
    seed: int = arg(42, "order of the corpus within each repetition")
    items: int | None = arg(None, "items per stream for the corpus (default: all recorded)")
    holdout: float = arg(0.05, "share of each task's demonstrations never fed, to check heads on")
    out: Path | None = arg(Path("bench/results/learner.json"), "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


@dataclass
class Fed:
    """What feeding measured: totals after every step, and the heads' checks."""

    samples: list[Sample]
    heads: list[dict[str, Any]]
    memories_cap_mb: float  # the heads' memories, all full
    batch: int  # demonstrations the learner reads per step


@dataclass
class Sample:
    """The learner's running totals after one step."""

    demos: int
    busy_s: float
    rss_mb: float
    memories_mb: float  # what the heads' remembered examples take now


def refitted_heads(learner: Any) -> Iterator[tuple[str, Any, Any]]:
    """(task, level, head) for every head refitted on its memory: the encoder's, the probe."""
    from cascade.levels.heads import LogisticHead

    for task, tl in learner.learners.items():
        for lv in tl.levels:
            head = getattr(lv, "probe", None) or getattr(lv, "head", None)
            if isinstance(head, LogisticHead):
                yield task, lv, head


def memories_mb(learner: Any) -> tuple[float, float]:
    """The refitted heads' example memories: MB held now, and at most (all full)."""
    sizes = [head.memory_nbytes() for _, _, head in refitted_heads(learner)]
    return sum(n for n, _ in sizes) / 2**20, sum(c for _, c in sizes) / 2**20


def rss_mb() -> float:
    from bench.semcache_timing import rss_bytes

    return rss_bytes(os.getpid()) / 2**20


# ---------------------------------------------------------------------------- the corpus


async def build_corpus(args: LearnerArgs, models_dir: Path) -> tuple[Any, dict[str, Path]]:
    """The learner's configuration (one task per stream) and the file of each task's
    demonstrations (JSON lines), reused while the task configuration is unchanged."""
    from bench.harness import ANNOTATIONS, CACHE, BenchContext, load_bench_config, run_stream
    from bench.stream import RunSpec, task_for
    from bench.streams import builtin, without_fuse
    from cascade.replay import ReplayFile
    from cascade.store.memory import MemoryStore

    path = args.config or Path("deploy/config.yaml")
    # every large-LM answer is recorded: a miss must fail loudly, not reach a server
    os.environ.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")
    config = load_bench_config(path)
    tasks, corpus = {}, {}
    for name, limit in STREAMS.items():
        stream = builtin(name, models_dir, seed=42, limit=min(limit, args.items or limit))
        template = stream.task_config(config.tasks[args.task])
        if name == "trec":
            template = without_fuse(template)
        task = task_for(RunSpec("cascade"), template)
        tasks[name] = task
        digest = hashlib.sha256(task.model_dump_json().encode()).hexdigest()[:12]
        cached = CACHE / f"learner-corpus.{name}.{len(stream.items)}.{digest}.jsonl"
        if not cached.is_file():
            large = config.backends[task.levels[-1].backend or ""]
            replay = ReplayFile(ANNOTATIONS, write_name=f"{name}.{getattr(large, 'model', '')}")
            ctx = BenchContext(config, models_dir, replay, stream.name)
            store = MemoryStore(Path(tempfile.mkdtemp(prefix="cg-corpus-")))
            # static threshold 1: every item reaches the large LM (a learned policy would
            # start answering some), while every level learns as it goes
            deferring = task_for(RunSpec("distill", "threshold", 1.0), template)
            await run_stream(
                ctx, deferring, stream, freeze_after=len(stream.items), label=name, store=store
            )
            cached.write_bytes(store.demo_path("bench").read_bytes())
            await store.close()
        corpus[name] = cached
        print(f"corpus {name}: {cached}", flush=True)
    return config.model_copy(update={"tasks": tasks}), corpus


def fresh_demos(corpus: dict[str, list[str]], seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The corpus over and over, each repetition in a new seeded order, every demonstration
    with a request id of its own (the store appends each exactly once by its content)."""
    pairs = [(task, i) for task, lines in corpus.items() for i in range(len(lines))]
    rng, rep = random.Random(seed), 0
    while True:
        rng.shuffle(pairs)
        for task, i in pairs:
            demo = json.loads(corpus[task][i])
            demo["task"], demo["request_id"] = task, f"bench-{rep}-{i}"
            demo["ts"] = round(time.time(), 3)
            yield task, demo
        rep += 1


# ---------------------------------------------------------------------------- the run


def feed_process(args: LearnerArgs, config: Any, files: dict[str, Path]) -> Fed:
    """``feed`` in a process of its own (spawned: nothing of the corpus run's models or
    memory in it), so its resident memory is a learner's."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_feed_main, (args, config, files))


def _feed_main(args: LearnerArgs, config: Any, files: dict[str, Path]) -> Fed:
    corpus = {task: path.read_text().splitlines() for task, path in files.items()}
    return asyncio.run(feed(args, config, corpus))


def split_holdout(
    corpus: dict[str, list[str]], share: float
) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    """The last ``share`` of each task's demonstrations, never fed, as parsed demonstrations
    to check the heads on; the rest to feed."""
    from cascade.demos import parse_demo

    fed, held = {}, {}
    for task, lines in corpus.items():
        cut = len(lines) - max(1, int(len(lines) * share))
        fed[task] = lines[:cut]
        held[task] = [parse_demo(f"0-{i}", json.loads(line)) for i, line in enumerate(lines[cut:])]
    return fed, held


def check_heads(learner: Any, held: dict[str, list[Any]], at: int) -> list[dict[str, Any]]:
    """Each refitted head as it is now against a copy refitted to convergence on the same
    memory, on demonstrations it never saw: accuracy against the large LM, and how far apart
    their probabilities are. Untimed."""
    import copy

    rows = []
    for task, lv, head in refitted_heads(learner):
        ex = lv.head_examples(held[task]) if head.trained else None
        if ex is None:
            continue
        x, y = ex
        ref = copy.deepcopy(head)
        ref.refit(converge=True)
        live, best = head.proba(x), ref.proba(x)
        rows.append(
            {
                "demonstrations": at,
                "task": task,
                "head": lv.name,
                "remembered": len(head.y_mem),
                "accuracy": round(float((live.argmax(1) == y).mean()), 4),
                "accuracy_converged": round(float((best.argmax(1) == y).mean()), 4),
                "mean_abs_dp": round(float(np.abs(live - best).mean()), 5),
                "max_abs_dp": round(float(np.abs(live - best).max()), 4),
            }
        )
    return rows


async def feed(args: LearnerArgs, config: Any, corpus: dict[str, list[str]]) -> Fed:
    """Feed a fresh learner (the ``learn`` command's defaults) ``args.total`` demonstrations
    (all but a held-out share of the corpus); a sample of its totals after every step, and
    its heads checked at every checkpoint."""
    from app.settings import Settings
    from bench.harness import Progress, quiet_llama
    from cascade.backends import BackendPool
    from cascade.learner import Learner
    from cascade.store.redis import RedisStore

    prefix = f"bench-learner-{os.getpid()}-{int(time.time())}:"
    store = RedisStore(
        args.redis_url,
        Path(tempfile.mkdtemp(prefix="cg-learner-spill-")),
        prefix=prefix,
        demo_maxlen=args.stream_cap,
    )
    await store.start()
    pool = BackendPool(config, Settings().models_dir)
    with quiet_llama():
        learner = Learner(config, pool, store, consumer="bench-learner")
    await learner.resume()
    corpus, held = split_holdout(corpus, args.holdout)
    source = fresh_demos(corpus, args.seed)
    due = sorted(args.checkpoints)
    heads: list[dict[str, Any]] = []
    appended = dict.fromkeys(corpus, 0)
    taken = dict.fromkeys(corpus, 0)
    samples = [Sample(0, 0.0, rss_mb(), 0.0)]
    busy = 0.0
    prog = Progress("bench learner", args.total, every=5_000)
    try:
        while sum(taken.values()) < args.total:
            # top up, untimed: enough waiting for several full batches of every task
            while sum(appended.values()) - sum(taken.values()) < 8 * learner.batch * len(corpus):
                if sum(appended.values()) >= args.total:
                    break
                task, demo = next(source)
                await store.append_demo(task, demo)
                appended[task] += 1
            for task in corpus:
                if taken[task] >= appended[task]:
                    continue
                t0 = time.perf_counter()
                n = await learner.step(task, block_ms=0)
                busy += time.perf_counter() - t0
                taken[task] += n
                total = sum(taken.values())
                samples.append(Sample(total, busy, rss_mb(), memories_mb(learner)[0]))
                prog.update(min(total, args.total), demos_per_s=total / max(busy, 1e-9))
                while due and total >= due[0]:
                    heads += await asyncio.to_thread(check_heads, learner, held, due.pop(0))
        for task in corpus:  # the last versions, as a learner publishes within a second
            t0 = time.perf_counter()
            await learner.publish(task)
            busy += time.perf_counter() - t0
        samples.append(Sample(sum(taken.values()), busy, rss_mb(), memories_mb(learner)[0]))
        if due:
            heads += await asyncio.to_thread(check_heads, learner, held, due.pop(0))
    finally:
        await _drop_keys(store, prefix)
        await store.close()
        await pool.aclose()
    return Fed(samples, heads, memories_mb(learner)[1], learner.batch)


async def _drop_keys(store: Any, prefix: str) -> None:
    """The bench's keys leave Redis with it (the append-once markers would stay a day)."""
    client = store.slow
    batch: list[Any] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch = []
    if batch:
        await client.delete(*batch)


def points(samples: list[Sample], checkpoints: tuple[int, ...]) -> list[dict[str, float]]:
    """Throughput over the stretch before each checkpoint (its last fifth, at least 500
    demonstrations) and resident memory when it was reached."""
    out = []
    for c in checkpoints:
        end = next((s for s in samples if s.demos >= c), None)
        if end is None:
            continue
        lo = max(0.0, min(0.8 * c, c - 500))
        start = max((s for s in samples if s.demos <= lo), key=lambda s: s.demos)
        rate = (end.demos - start.demos) / max(end.busy_s - start.busy_s, 1e-9)
        out.append(
            {
                "demonstrations": c,
                "demos_per_s": round(rate, 1),
                "rss_mb": round(end.rss_mb, 1),
                "memories_mb": round(end.memories_mb, 1),
                "window": [start.demos, end.demos],
            }
        )
    return out


async def learner_bench(args: LearnerArgs) -> dict[str, Any]:
    from app.settings import Settings
    from bench.learner_report import write_report
    from bench.stream import write_json

    t0 = time.perf_counter()
    config, files = await build_corpus(args, Settings().models_dir)
    head = next(iter(config.tasks.values()))
    fed = await asyncio.to_thread(feed_process, args, config, files)
    samples = fed.samples
    corpus = {task: sum(1 for _ in path.open()) for task, path in files.items()}
    pts = points(samples, args.checkpoints)
    payload: dict[str, Any] = {
        "config": {
            "config": str(args.config or "deploy/config.yaml"),
            "task": args.task,
            "levels": [f"{lc.name} ({lc.kind})" for lc in head.levels],
            "corpus": corpus,
            "total": args.total,
            "batch": fed.batch,
            "stream_cap": args.stream_cap,
            "holdout": args.holdout,
            "cpus": os.cpu_count(),
        },
        "points": pts,
        "heads": fed.heads,
        "memories_cap_mb": round(fed.memories_cap_mb, 1),
        "series": [
            {
                "demonstrations": s.demos,
                "busy_s": round(s.busy_s, 3),
                "rss_mb": round(s.rss_mb, 1),
                "memories_mb": round(s.memories_mb, 1),
            }
            for s in samples[:: max(1, len(samples) // 400)]
        ],
        "run_s": round(time.perf_counter() - t0, 1),
    }
    if args.out is not None:
        write_json(args.out, payload)
    if args.write_doc:
        write_report(payload)
    return payload
