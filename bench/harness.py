"""Running a stream through the real cascade in-process, with the real learner, in order.

Every item is answered before its demonstration is learned (no peeking). The learner reads
the demonstrations from the store and publishes versions, which the runner hot-loads, exactly
as in a deployment; only the clock is replaced by a count (a version every ``publish_every``
demonstrations, about what a 1 s publish interval collects at large-LM speed), so runs are
reproducible. Large-LM answers are replayed from ``bench/annotations/`` (recorded on a miss
through the real OpenAI-compatible server); frozen models are memoised in ``bench/cache/``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.memo import MemoEncoder, MemoLlama
from bench.streams import Stream
from cascade.backends import BackendPool
from cascade.config import Config, TaskConfig
from cascade.learner import Learner
from cascade.replay import ReplayFile
from cascade.runner import Ask, Cascade, CascadeError
from cascade.store.memory import MemoryStore

BENCH_DIR = Path(__file__).resolve().parent
ANNOTATIONS = BENCH_DIR / "annotations"
CACHE = BENCH_DIR / "cache"
ROOT = BENCH_DIR.parent


def load_bench_config(path: Path | str) -> Config:
    """The configuration with patient large-LM calls: a bench queues thousands of requests on
    one busy llama.cpp server, where a timed-out retry only queues another copy of the work."""
    from cascade.config import OpenAIBackend, load_config

    config = load_config(path)
    backends = {
        name: b.model_copy(update={"timeout_s": max(b.timeout_s, 600.0)})
        if isinstance(b, OpenAIBackend)
        else b
        for name, b in config.backends.items()
    }
    wait = max(config.defaults.request_timeout_s, 1800.0)
    defaults = config.defaults.model_copy(update={"request_timeout_s": wait})
    return config.model_copy(update={"backends": backends, "defaults": defaults})


class Progress:
    """One line of progress on stderr, rewritten in place on a terminal."""

    def __init__(self, label: str, total: int, every: int = 100) -> None:
        self.label, self.total, self.every = label, total, every
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, **figures: float) -> None:
        if done % self.every and done != self.total:
            return
        rate = done / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        figs = " ".join(f"{k} {v:.3f}" for k, v in figures.items())
        line = f"[{self.label}] {done}/{self.total} {rate:.1f} it/s eta {eta:.0f}s {figs}"
        end = "\r" if self.tty and done != self.total else "\n"
        print(line, end=end, file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """What every run of a benchmark shares: models, recorded answers, memo files."""

    config: Config
    models_dir: Path
    replay: ReplayFile
    stream_name: str
    memos: dict[str, Any] = field(default_factory=dict)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cg-bench-")))

    def wrap(self, kind: str, backend: Any) -> Any:
        """Memoise frozen models, one memo per model and stream, shared across runs."""
        key = f"{kind}:{backend.name}"
        if key not in self.memos:
            path = CACHE / f"{self.stream_name}.{backend.name}.{kind}.jsonl"
            memo_cls = MemoLlama if kind == "llama" else MemoEncoder
            self.memos[key] = memo_cls(backend, path)
        return self.memos[key]

    _pool: BackendPool | None = None

    @property
    def pool(self) -> BackendPool:
        """One pool for every run: models load once (runs differ in tasks, not backends)."""
        if self._pool is None:
            self._pool = BackendPool(
                self.config, self.models_dir, cache=self.replay, wrap=self.wrap
            )
        return self._pool


@dataclass
class ItemResult:
    label: str | None
    level: str
    llm_called: bool
    cost: float
    levels_run: list[str]
    degraded: bool = False
    error: str | None = None
    output: str = ""


async def run_stream(
    ctx: BenchContext,
    task: TaskConfig,
    stream: Stream,
    learn: bool = True,
    publish_every: int = 8,
    freeze_after: int | None = None,
    then_threshold: float | None = None,
    label: str = "run",
    progress_every: int = 250,
    learner_stats: dict[str, float] | None = None,
    store: MemoryStore | None = None,
) -> list[ItemResult]:
    """Answer every item of ``stream`` in order with a fresh cascade for ``task``.

    ``freeze_after`` (distillation): the first N items all go to the large LM (the cheap
    levels run, so their demonstrations carry their features), the learner trains on them,
    then learning stops and the policies' thresholds become ``then_threshold``.
    ``learner_stats`` receives the seconds the learner spent and the demonstrations it took.
    ``store``: run on this store and leave it open (its demonstrations are the caller's).
    """
    config = ctx.config.model_copy(update={"tasks": {"bench": task}})
    pool = ctx.pool
    own_store = store is None
    if store is None:
        store = MemoryStore(Path(tempfile.mkdtemp(prefix="run-", dir=ctx.work_dir)))
    with quiet_llama():
        cascade = Cascade(config, pool, store)
        learner = (
            Learner(
                config,
                pool,
                store,
                consumer="bench",
                publish_every_s=float("inf"),
                publish_every_n=publish_every,
            )
            if learn
            else None
        )
    if learner is not None:
        await learner.resume()
    runtime = cascade.tasks["bench"]
    if freeze_after is not None:
        for pol in runtime.policies:
            if pol is not None:
                pol.set_params(threshold=1.0)
    results: list[ItemResult] = []
    prog = Progress(label, len(stream.items), progress_every)
    llm_name = task.levels[-1].name
    correct = called = 0
    learn_s = 0.0
    for i, item in enumerate(stream.items):
        try:
            out = await cascade.run("bench", item.text, Ask(use_cache=False))
        except CascadeError as e:
            results.append(ItemResult(None, "error", True, 0.0, [], error=str(e)))
            called += 1  # counted as sent to the large LM, as every error is
            continue
        ran = [t.name for t in out.levels]
        results.append(
            ItemResult(
                out.label,
                out.level,
                llm_name in ran,
                out.cost,
                ran,
                out.degraded,
                output=out.output,
            )
        )
        correct += out.label == item.label
        called += results[-1].llm_called
        if learner is not None and (freeze_after is None or i < freeze_after):
            t_learn = time.perf_counter()
            while await learner.step("bench", block_ms=0):
                pass
            learn_s += time.perf_counter() - t_learn
            if learner.published.get("bench", 0) > cascade.tasks["bench"].version:
                await cascade.refresh()
        if learner is not None and freeze_after is not None and i + 1 == freeze_after:
            await learner.publish("bench")
            await cascade.refresh()
            for pol in runtime.policies:
                if pol is not None and then_threshold is not None:
                    pol.set_params(threshold=then_threshold)
        prog.update(i + 1, acc=correct / len(results), llm_share=called / len(results))
    if learner is not None and learner_stats is not None:
        learner_stats["seconds"] = learn_s
        learner_stats["demos"] = float(learner.learners["bench"].demos)
    if own_store:
        await store.close()
    return results


@contextlib.contextmanager
def quiet_llama() -> Iterator[None]:
    """llama.cpp prints to fd 2 when it loads a model; keep the progress lines readable."""
    if os.environ.get("CASCADE_BENCH_VERBOSE"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
