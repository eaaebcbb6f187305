"""The learner: demonstrations in, new versions of levels and policies out.

It consumes each task's demonstrations in order (a Redis consumer group, so several gateway
processes share one learner and no demonstration is processed twice; in embedded mode an
in-process task reading the append-only file), updates the trainable levels and the learned
policies, and publishes a new version. A version records the id of the last demonstration it
includes; demonstrations are acknowledged only after the version that contains them is
stored, so a learner killed at any point resumes exactly where its last version ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from cascade.backends import BackendPool
from cascade.config import Config
from cascade.demos import parse_demo
from cascade.levels import Demo, Level, build_level
from cascade.runner import build_policy
from cascade.store import Store, open_store
from cascade.versions import TaskState, dump_state, load_state
from policies import Features, Policy

log = logging.getLogger(__name__)

#: Level kinds with parameters the learner trains (LM levels are frozen).
TRAINABLE = ("logistic", "encoder")


@dataclass
class TaskLearner:
    """The learner's own copy of one task's trainable levels and learned policies."""

    task: str
    labels: list[str]
    levels: list[Level]  # trainable cheaper levels
    policies: dict[str, Policy]  # by level name, non-final levels
    level_costs: dict[str, float]
    applied_id: str | None = None
    demos: int = 0
    ignored: int = 0
    since_publish: int = 0
    last_publish: float = field(default_factory=time.monotonic)

    def absorb(self, batch: list[Demo]) -> bool:
        """Learn from a batch (CPU work, run in a worker thread). Returns whether it changed."""
        usable = [d for d in batch if d.label is not None or d.source == "feedback"]
        self.ignored += len(batch) - len(usable)
        # feedback outranks the large LM for the same item: apply it last, twice
        usable.sort(key=lambda d: d.source == "feedback")
        usable += [d for d in usable if d.source == "feedback"]
        changed = False
        for d in usable:
            for name, pol in self.policies.items():
                rec = d.levels.get(name)
                if rec is None or not rec.get("ready", True) or not rec.get("valid", True):
                    continue
                target = 0.0 if rec.get("label") == d.label else 1.0
                pol.update(Features.from_json(rec.get("features", {})), target)
                changed = changed or pol.learned
        for lv in self.levels:
            changed = lv.learn(usable) or changed
        self.demos += len(batch)
        self.since_publish += len(batch)
        if batch:
            self.applied_id = batch[-1].id
        return changed

    def snapshot(self) -> TaskState:
        return TaskState(
            task=self.task,
            labels=self.labels,
            levels={lv.name: lv.state() for lv in self.levels if lv.state()},
            policies={n: p.state() for n, p in self.policies.items() if p.state()},
            meta={
                "applied_id": self.applied_id or "",
                "demos": str(self.demos),
                "created": f"{time.time():.3f}",
            },
        )

    def restore(self, state: TaskState) -> None:
        for lv in self.levels:
            if lv.name in state.levels:
                lv.load_state(state.levels[lv.name])
        for name, pol in self.policies.items():
            if name in state.policies:
                pol.load_state(state.policies[name])
        self.applied_id = state.applied_id
        self.demos = state.demos


def default_consumer() -> str:
    return os.environ.get("CASCADE_LEARNER_NAME") or f"learner-{socket.gethostname()}"


class Learner:
    """Runs one ``TaskLearner`` per task against the store."""

    def __init__(
        self,
        config: Config,
        pool: BackendPool,
        store: Store,
        consumer: str | None = None,
        batch: int = 64,
        publish_every_s: float = 1.0,
        publish_every_n: int = 256,
        on_publish: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer or default_consumer()
        self.batch = batch
        self.publish_every_s = publish_every_s
        self.publish_every_n = publish_every_n
        self.on_publish = on_publish
        self.learners: dict[str, TaskLearner] = {}
        for name, tc in config.tasks.items():
            levels = [build_level(lc, tc, pool) for lc in tc.levels[:-1] if lc.kind in TRAINABLE]
            policies = {lc.name: build_policy(lc) for lc in tc.levels[:-1]}
            self.learners[name] = TaskLearner(
                name, list(tc.labels), levels, policies, {lc.name: lc.cost for lc in tc.levels}
            )
        self.published: dict[str, int] = {}
        self._unacked: dict[str, list[str]] = {}

    async def resume(self) -> None:
        for name, tl in self.learners.items():
            latest = await self.store.latest_version(name)
            if latest:
                blob = await self.store.get_version(name, latest)
                if blob is not None:
                    state = load_state(blob)
                    if state.labels == tl.labels:
                        tl.restore(state)
                        self.published[name] = latest
            await self.store.resume_demos(name, self.consumer, tl.applied_id)
            log.info(
                "learner %s: task %s resumes after demonstration %s (version %s)",
                self.consumer,
                name,
                tl.applied_id,
                self.published.get(name, 0),
            )

    async def step(self, task: str, block_ms: int = 500) -> int:
        """Read, learn and maybe publish once; return how many demonstrations were read."""
        tl = self.learners[task]
        items = await self.store.read_demos(task, self.consumer, self.batch, block_ms)
        if items:
            demos = [parse_demo(i, d) for i, d in items]
            await anyio.to_thread.run_sync(tl.absorb, demos)
            self._unacked.setdefault(task, []).extend(i for i, _ in items)
        due = tl.since_publish >= self.publish_every_n or (
            tl.since_publish and time.monotonic() - tl.last_publish >= self.publish_every_s
        )
        if due:
            await self.publish(task)
        return len(items)

    async def publish(self, task: str) -> int:
        tl = self.learners[task]
        blob = await anyio.to_thread.run_sync(lambda: dump_state(tl.snapshot()))
        number = await self.store.put_version(task, blob)
        await self.store.ack_demos(task, self._unacked.pop(task, []))
        tl.since_publish = 0
        tl.last_publish = time.monotonic()
        self.published[task] = number
        if self.on_publish is not None:
            self.on_publish(task, number)
        return number

    async def run(self) -> None:
        """Forever: one loop per task; store errors are retried, never fatal."""
        while True:
            try:
                await self.resume()
                break
            except Exception as e:
                log.warning("learner cannot resume yet (%s); retrying", e)
                await asyncio.sleep(1.0)
        await asyncio.gather(*(self._loop(t) for t in self.learners))

    async def _loop(self, task: str) -> None:
        while True:
            try:
                await self.step(task)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("learner step for %s failed (%s); retrying", task, e)
                await asyncio.sleep(0.5)


async def run_learner_process(settings: Any, config: Config, consumer: str | None = None) -> None:
    """``cascade-gateway learn``: one learner for every gateway sharing the store."""
    store = open_store(settings)
    await store.start()
    pool = BackendPool(config, settings.models_dir)
    learner = Learner(config, pool, store, consumer=consumer)
    try:
        await learner.run()
    finally:
        await pool.aclose()
        await store.close()
