"""``bench semcache``: the semantic cache against what peers ship, on traffic with near-repeats.

The stream is the disaster tweets as they come (duplicates kept: retweets, one headline with
different links), answered by the large LM alone behind each cache, so the large-LM share is
the misses' (and verifications') share. Systems: no cache, the exact cache, fixed cosine
thresholds (LiteLLM's ``similarity_threshold``), and the verified cache at its targets. A hit's
error is disagreement with the large LM's own answer for that request (recorded once for every
item under ``bench/annotations/``).

Wall time per system is modelled from figures measured live in the same run: each large-LM call
at the measured seconds per call, each semantic lookup at its measured p50 (embedding and
search); everything else (the cascade's own work, with recorded answers) as measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.flags import arg
from bench.semcache_checks import target_checks
from bench.semcache_timing import miss_path, time_lookups
from bench.streams import Stream, tweet_traffic, without_fuse

#: Seconds per large-LM call when the timing is skipped (--no-timing): measured here before.
ASSUMED_LLM_S = 0.45

#: The configured encoder, and the same model with int8 weights (added to the configuration
#: here): a task whose levels do not embed the request pays the cache's embedding per miss.
ENCODER, FAST_ENCODER = "minilm", "minilm-int8"


@dataclass
class SemcacheArgs:
    """``bench semcache``'s arguments; each is also its flag."""

    limit: int | None = arg(
        None, "requests (default: all 7,613 tweets, in a seeded order, duplicates kept)"
    )
    seed: int = arg(42)
    thresholds: tuple[float, ...] = arg(
        (0.8, 0.9, 0.95, 0.98), "fixed cosine thresholds (peers ship 0.8-0.95)"
    )
    targets: tuple[float, ...] = arg(
        (0.9, 0.95, 0.97, 0.99), "target agreements of the verified cache"
    )
    fast_targets: tuple[float, ...] = arg(
        (0.95,), "target agreements of the verified cache on the int8 encoder"
    )
    verify_share: float | None = arg(None, "the verified cache's share of hits verified")
    min_samples: int | None = arg(None, "the verified cache's comparisons before a hit")
    z: float | None = arg(None, "the verified cache's Wilson z")
    config: Path | None = arg(None, "configuration file (default: deploy/config.yaml)")
    task: str = arg("sentiment", "configured task whose large level the stream runs with")
    orders: int = arg(3, "further orders of the same requests, the caches rerun on each")
    timing: bool = arg(True, "skip the live timing (large-LM seconds, lookup latency)")
    timing_n: int = arg(300, "lookups timed live")
    out: Path | None = arg(Path("bench/results/semcache.json"), "write the JSON results here")
    write_doc: bool = arg(True, "do not rewrite docs/BENCHMARKS.md", flag="no-doc")


@dataclass
class System:
    name: str
    semantic: dict[str, Any] | None  # the task's semantic_cache block; None: exact cache only
    use_cache: bool = True

    @property
    def row(self) -> dict[str, Any]:
        sem = self.semantic or {}
        out: dict[str, Any] = {"system": self.name}
        if "fixed_threshold" in sem:
            out["threshold"] = sem["fixed_threshold"]
        if "target_agreement" in sem:
            out["target_agreement"] = sem["target_agreement"]
        if sem.get("encoder", ENCODER) != ENCODER:
            out["encoder"] = sem["encoder"]
        return out


def systems(args: SemcacheArgs) -> list[System]:
    out = [System("no_cache", None, use_cache=False), System("exact", None)]
    out += [System("fixed", {"encoder": ENCODER, "fixed_threshold": t}) for t in args.thresholds]
    knobs = {"verify_share": args.verify_share, "min_samples": args.min_samples, "z": args.z}
    learned = {k: v for k, v in knobs.items() if v is not None}
    out += [
        System("verified", {"encoder": ENCODER, "target_agreement": t, **learned})
        for t in args.targets
    ]
    out += [
        System("verified", {"encoder": FAST_ENCODER, "target_agreement": t, **learned})
        for t in args.fast_targets
    ]
    return out


class MemoEmbedder:
    """The encoder with an in-memory memo: every system embeds the same texts, so they are
    embedded once (lookup latency is timed separately, on the encoder itself)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = getattr(backend, "name", "encoder")
        self.dim = getattr(backend, "dim", None)
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if todo:
            for t, v in zip(todo, self.backend.embed(todo, batch_size), strict=True):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts])

    def warmup(self) -> None:
        self.backend.embed(["warm up"])


def _large_only(stream: Stream, config: Any, task: str) -> Any:
    """The stream's task answered by the large LM alone, its own answers (no fusing)."""
    template = without_fuse(stream.task_config(config.tasks[task]))
    return template.model_copy(update={"levels": [template.levels[-1]]})


def with_fast_encoder(config: Any) -> Any:
    """The configuration with ``FAST_ENCODER``: the configured encoder's model, int8."""
    enc = config.backends[ENCODER]
    fast = enc.model_copy(update={"precision": "int8"})
    return config.model_copy(update={"backends": {**config.backends, FAST_ENCODER: fast}})


def _pool(config: Any, models_dir: Path, replay: Any) -> tuple[Any, dict[str, Any]]:
    """Backends with recorded large-LM answers and a memo over each encoder; and the
    encoders themselves, for timing."""
    from bench.harness import quiet_llama
    from cascade.backends import BackendPool

    with quiet_llama():
        pool = BackendPool(config, models_dir, cache=replay, wrap=_memo_encoders)
        return pool, {n: pool.encoder(n).backend for n in (ENCODER, FAST_ENCODER)}


def _memo_encoders(kind: str, backend: Any) -> Any:
    return MemoEmbedder(backend) if kind == "encoder" else backend


def summarise(
    sys_: System,
    outs: list[Any],
    llm_labels: list[str | None],
    run_s: float,
    llm_s: float,
    lookup_s: float,
) -> dict[str, Any]:
    n = len(outs)
    hits = [i for i, o in enumerate(outs) if o.cached]
    sem_hits = [i for i in hits if outs[i].cache == "semantic"]
    wrong = [i for i in hits if outs[i].label != llm_labels[i]]
    sem_wrong = [i for i in sem_hits if outs[i].label != llm_labels[i]]
    calls = sum(1 for o in outs if not o.cached)
    lookups = sum(1 for o in outs if o.cache != "exact") if sys_.semantic else 0
    sims = [outs[i].similarity for i in sem_hits]
    return {
        **sys_.row,
        "hit_rate": round(len(hits) / n, 4),
        "error_rate": round(len(wrong) / len(hits), 4) if hits else 0.0,
        "llm_share": round(calls / n, 4),
        "wall_s": round(run_s + calls * llm_s + lookups * lookup_s, 1),
        "hits": len(hits),
        "semantic_hits": len(sem_hits),
        "semantic_errors": len(sem_wrong),
        "exact_hits": len(hits) - len(sem_hits),
        "min_similarity_served": round(min(sims), 4) if sims else None,
        "hits_first_half": sum(1 for i in hits if i < n // 2),
        "hits_second_half": sum(1 for i in hits if i >= n // 2),
        "accuracy_vs_large": round(
            sum(o.label == lab for o, lab in zip(outs, llm_labels, strict=True)) / n, 4
        ),
    }


async def run_system(
    sys_: System, base: Any, template: Any, pool: Any, stream: Stream, label: str
) -> tuple[list[Any], float, dict[str, Any] | None]:
    """Every item in order through a fresh cascade (its own embedded store); the outcomes,
    the wall seconds and the gate's final report."""
    import tempfile

    from bench.harness import Progress
    from cascade.runner import Ask, Cascade
    from cascade.store.memory import MemoryStore

    task = type(template).model_validate({**template.model_dump(), "semantic_cache": sys_.semantic})
    config = base.model_copy(update={"tasks": {"bench": task}})
    store = MemoryStore(Path(tempfile.mkdtemp(prefix="cg-semcache-")))
    cascade = Cascade(config, pool, store)
    prog = Progress(label, len(stream.items), 500)
    outs = []
    t0 = time.perf_counter()
    for i, item in enumerate(stream.items):
        outs.append(await cascade.run("bench", item.text, Ask(use_cache=sys_.use_cache)))
        prog.update(i + 1, hits=sum(o.cached for o in outs) / len(outs))
    run_s = time.perf_counter() - t0
    rt = cascade.tasks["bench"]
    report = rt.semantic.report() if rt.semantic is not None else None
    await store.close()
    return outs, run_s, report


async def other_orders(
    args: SemcacheArgs,
    config: Any,
    template: Any,
    pool: Any,
    stream: Stream,
    llm_s: float,
    lookup_s: float,
) -> list[dict[str, Any]]:
    """The caches (not the baselines) on ``args.orders`` reshuffles of the same requests:
    one order is one draw of which near-repeat comes first, and a learned gate's early
    evidence depends on it. Per order and system: hits and error rate."""
    import dataclasses
    import random

    out = []
    for k in range(1, args.orders + 1):
        items = list(stream.items)
        random.Random(k).shuffle(items)
        shuffled = dataclasses.replace(stream, items=items)
        llm_labels = None
        for sys_ in systems(args):
            if sys_.name == "exact":
                continue
            label = f"order {k}/" + "/".join(str(v) for v in sys_.row.values())
            outs, run_s, _ = await run_system(sys_, config, template, pool, shuffled, label)
            if llm_labels is None:
                llm_labels = [o.label for o in outs]
                continue
            row = summarise(sys_, outs, llm_labels, run_s, llm_s, lookup_s)
            keep = (
                "system",
                "threshold",
                "target_agreement",
                "encoder",
                "hits",
                "error_rate",
                "hit_rate",
            )
            out.append({"order": k, **{c: row[c] for c in keep if c in row}})
            print(out[-1], flush=True)
    return out


async def semcache_bench(args: SemcacheArgs) -> dict[str, Any]:
    """Annotate what is missing, run every system, time the lookups; JSON, docs, plot."""
    import os

    from app.settings import Settings
    from bench.harness import ANNOTATIONS, BenchContext, load_bench_config
    from bench.stream import _large_model, _missing_answers, measure_level_seconds, write_json
    from cascade.config import load_config
    from cascade.llm_server import local_large_llm
    from cascade.replay import ReplayFile

    settings = Settings()
    models_dir = settings.models_dir
    stream = tweet_traffic(models_dir, args.seed, args.limit)
    base = load_config(args.config or settings.config_path)
    template = stream.task_config(base.tasks[args.task])
    replay = ReplayFile(ANNOTATIONS, write_name=f"{stream.name}.{_large_model(base, template)}")
    missing = _missing_answers(base, template, stream, replay)
    need_server = (missing > 0 or args.timing) and not settings.llm_base_url
    print(
        f"semcache: {len(stream.items)} requests ({len({it.text for it in stream.items})} "
        f"distinct texts); {missing} large-LM answers to compute",
        flush=True,
    )
    timing = fast = None
    if args.timing:  # before the large LM's server starts: it would compete for the cores
        os.environ.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")  # never called here
        config = with_fast_encoder(load_bench_config(args.config or settings.config_path))
        pool, encoders = _pool(config, models_dir, replay)
        large_only = _large_only(stream, config, args.task)
        timing = await time_lookups(
            large_only, config, pool, encoders[ENCODER], stream, args.timing_n, ENCODER
        )
        print(f"lookup: {timing}", flush=True)
        fast = await time_lookups(
            large_only, config, pool, encoders[FAST_ENCODER], stream, args.timing_n, FAST_ENCODER
        )
        print(f"lookup, int8 encoder: {fast}", flush=True)
        if not settings.llm_base_url:
            del os.environ["LLM_BASE_URL"]
    with local_large_llm(models_dir, settings.data_dir, enabled=need_server) as url:
        if url:
            os.environ["LLM_BASE_URL"] = url
        elif not settings.llm_base_url:
            os.environ["LLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # all recorded: never called
        config = with_fast_encoder(load_bench_config(args.config or settings.config_path))
        template = _large_only(stream, config, args.task)
        pool, _ = _pool(config, models_dir, replay)
        llm_s = ASSUMED_LLM_S
        if args.timing:
            ctx = BenchContext(config, models_dir, replay, stream.name)
            large = template.levels[-1].name
            llm_s = (await measure_level_seconds(ctx, template, stream, n=16))[large]
            print(f"large LM {llm_s:.3f} s/call", flush=True)
        lookup_s = (timing or {}).get("lookup_ms_p50", 10.0) / 1000
        rows, llm_labels = [], None
        for sys_ in systems(args):
            label = "/".join(str(v) for v in sys_.row.values())
            outs, run_s, report = await run_system(sys_, config, template, pool, stream, label)
            if llm_labels is None:  # the first system, no cache: the large LM's own answers
                llm_labels = [o.label for o in outs]
            row = summarise(sys_, outs, llm_labels, run_s, llm_s, lookup_s)
            row["gate"] = report
            rows.append(row)
            print(row, flush=True)
        orders = await other_orders(args, config, template, pool, stream, llm_s, lookup_s)
    wall0 = rows[0]["wall_s"]
    for row in rows:
        row["wall_ratio"] = round(row["wall_s"] / wall0, 4)
    payload = {
        "stream": "disaster-tweets (duplicates kept)",
        "items": len(stream.items),
        "distinct_texts": len({it.text for it in stream.items}),
        "seed": args.seed,
        "llm_seconds_per_call": round(llm_s, 4),
        "llm_seconds_measured": args.timing,
        "timing": timing,
        "timing_int8_encoder": fast,
        "miss_path": miss_path(timing, fast, llm_s),
        "runs": rows,
        "orders": orders,
        "targets": target_checks(rows, orders),
    }
    if args.out is not None:
        write_json(args.out, payload)
    if args.write_doc:
        from bench.semcache_report import write_semcache_report

        write_semcache_report(payload)
    return payload
