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
from typing import Any

import anyio

from cascade.aio import stop_if_cancelled
from cascade.backends import BackendPool
from cascade.config import Config
from cascade.demos import parse_demo
from cascade.levels import build_level
from cascade.quality import QualityMeasure
from cascade.runtime import build_policy
from cascade.store import Store, open_store
from cascade.task_learner import TaskLearner
from cascade.versions import dump_state, load_state

log = logging.getLogger(__name__)

#: Level kinds that may have parameters to learn (an LM's weights stay frozen; its probe learns).
TRAINABLE = ("logistic", "encoder", "local_lm", "router")


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
            levels = [
                lv
                for lc in tc.levels[:-1]
                if lc.kind in TRAINABLE
                for lv in [build_level(lc, tc, pool, for_learner=True)]
                if lv.trainable
            ]
            policies = {lc.name: build_policy(lc) for lc in tc.levels[:-1]}
            quality = None
            if tc.kind == "generate":
                q = tc.quality
                embedder = pool.encoder(q.backend) if q.measure == "cosine" and q.backend else None
                quality = QualityMeasure(q.measure, q.threshold, embedder)
            self.learners[name] = TaskLearner(
                name,
                list(tc.labels),
                levels,
                policies,
                {lc.name: lc.cost for lc in tc.levels},
                [lc.name for lc in tc.levels],
                quality,
            )
        self.published: dict[str, int] = {}
        self._unacked: dict[str, list[str]] = {}
        self._settings_rev: dict[str, int] = {}
        self._settings_checked: dict[str, float] = {}

    async def resume(self) -> None:
        """Continue from the latest version: rebuild training memory from the demonstrations it
        holds (the durable log), then adopt its parameters."""
        for name, tl in self.learners.items():
            latest = await self.store.latest_version(name)
            blob = await self.store.get_version(name, latest) if latest else None
            state = load_state(blob) if blob is not None else None
            if state is not None and state.labels == tl.labels:
                if state.applied_id:
                    await self._remember(name, tl, state.applied_id)
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

    async def _remember(self, task: str, tl: TaskLearner, upto: str) -> None:
        after: str | None = None
        while True:
            page = await self.store.history(task, after, upto, 500)
            if not page:
                break
            demos = [parse_demo(i, d) for i, d in page]
            await anyio.to_thread.run_sync(tl.remember, demos)
            after = page[-1][0]

    async def apply_settings(self, task: str) -> bool:
        """Adopt the operator's live policy settings (mu, targets) for learning too."""
        settings = await self.store.table_get("settings", task)
        rev = int((settings or {}).get("revision", 0))
        if rev <= self._settings_rev.get(task, 0):
            return False
        tl = self.learners[task]
        for level, params in (settings or {}).get("levels", {}).items():
            if level in tl.policies:
                tl.policies[level].set_params(**params)
        self._settings_rev[task] = rev
        return True

    async def step(self, task: str, block_ms: int = 500) -> int:
        """Read, learn and maybe publish once; return how many demonstrations were read."""
        tl = self.learners[task]
        if time.monotonic() - self._settings_checked.get(task, 0.0) >= 1.0:
            self._settings_checked[task] = time.monotonic()
            await self.apply_settings(task)
        items = await self.store.read_demos(task, self.consumer, self.batch, block_ms)
        if items:
            demos = [parse_demo(i, d) for i, d in items]
            _, counts = await anyio.to_thread.run_sync(tl.absorb, demos)
            if counts:
                self.store.count(task, counts)
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
                stop_if_cancelled()
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
            stop_if_cancelled()


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
