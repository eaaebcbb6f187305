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
import contextlib
import logging
import os
import signal
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
from cascade.store.base import LeaseLostError
from cascade.task_learner import TaskLearner
from cascade.versions import dump_state, load_state

log = logging.getLogger(__name__)

#: Level kinds that may have parameters to learn (an LM's weights stay frozen; its probe learns).
TRAINABLE = ("logistic", "encoder", "local_lm", "router")


def default_consumer() -> str:
    """Unique per process: two learners on one host must not share a name (a lease is held
    by name)."""
    return os.environ.get("CASCADE_LEARNER_NAME") or f"learner-{socket.gethostname()}-{os.getpid()}"


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
        lease_s: float = 10.0,
    ) -> None:
        self.store = store
        self.consumer = consumer or default_consumer()
        self.batch = batch
        self.publish_every_s = publish_every_s
        self.publish_every_n = publish_every_n
        self.on_publish = on_publish
        self.config, self.pool = config, pool
        self.lease_s = lease_s
        self.learners: dict[str, TaskLearner] = {
            name: self._task_learner(name) for name in config.tasks
        }
        self.published: dict[str, int] = {}
        self._unacked: dict[str, list[str]] = {}
        self._settings_rev: dict[str, int] = {}
        self._settings_checked: dict[str, float] = {}
        self.leasing = False  # run() learns the tasks whose lease it holds; step() alone, any
        self._tokens: dict[str, str] = {}  # the lease of each task this learner holds

    def _task_learner(self, name: str) -> TaskLearner:
        """A fresh learner of one task, from the configuration (no learned state yet)."""
        tc = self.config.tasks[name]
        levels = [
            lv
            for lc in tc.levels[:-1]
            if lc.kind in TRAINABLE
            for lv in [build_level(lc, tc, self.pool, for_learner=True)]
            if lv.trainable
        ]
        policies = {lc.name: build_policy(lc) for lc in tc.levels[:-1]}
        quality = None
        if tc.kind == "generate":
            q = tc.quality
            embedder = self.pool.encoder(q.backend) if q.measure == "cosine" and q.backend else None
            quality = QualityMeasure(q.measure, q.threshold, embedder)
        return TaskLearner(
            name,
            list(tc.labels),
            levels,
            policies,
            {lc.name: lc.cost for lc in tc.levels},
            [lc.name for lc in tc.levels],
            quality,
        )

    async def resume(self) -> None:
        """Continue every task from its latest version (one learner for all tasks)."""
        for name in self.learners:
            await self.resume_task(name)

    async def resume_task(self, name: str) -> None:
        """Continue one task from its latest version: rebuild training memory from the
        demonstrations it holds (the durable log), adopt its parameters, and take over every
        demonstration still pending (a dead learner's included)."""
        tl = self.learners[name]
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
        await self._renew(task)
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

    async def _renew(self, task: str) -> str | None:
        """Renew the task's lease (when leasing); its token. Lost: ``LeaseLostError``."""
        if not self.leasing:
            return None
        token = self._tokens.get(task)
        if token is None or not await self.store.task_lease(
            task, self.consumer, self.lease_s, token=token
        ):
            raise LeaseLostError(f"learner {self.consumer} lost the lease of task {task}")
        return token

    async def publish(self, task: str) -> int:
        tl = self.learners[task]
        blob = await anyio.to_thread.run_sync(lambda: dump_state(tl.snapshot()))
        owner = await self._renew(task)
        number = await self.store.put_version(task, blob, owner=owner)
        await self.store.ack_demos(task, self._unacked.pop(task, []))
        tl.since_publish = 0
        tl.last_publish = time.monotonic()
        self.published[task] = number
        if self.on_publish is not None:
            self.on_publish(task, number)
        return number

    async def run(self) -> None:
        """Forever: hold a fair share of the tasks' leases and learn those tasks, one loop
        each. Several learner processes divide the tasks this way; a dead one's leases expire
        and the others take its tasks over. Store errors are retried, never fatal."""
        self.leasing = True
        loops: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    await self._rebalance(loops)
                except Exception as e:
                    stop_if_cancelled()
                    log.warning("learner %s: store unavailable (%s); retrying", self.consumer, e)
                await asyncio.sleep(self.lease_s / 4)
        finally:
            for t in loops.values():
                t.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)
            for task in loops:  # hand over at once on shutdown, not after the lease expires
                with contextlib.suppress(Exception):
                    await self.store.task_release(task, self._tokens[task])

    async def _rebalance(self, loops: dict[str, asyncio.Task[None]]) -> None:
        """One round: drop the tasks whose lease was lost, hand over those beyond this
        learner's share (a learner joined), take free ones up to it (a learner left)."""
        alive = await self.store.learners_alive(self.consumer, self.lease_s)
        share = -(-len(self.learners) // max(1, alive))
        for task, t in list(loops.items()):
            if t.done():  # its loop ended: the lease was lost
                del loops[task]
                self._forget(task)
        while len(loops) > share:
            task = max(loops)
            t = loops.pop(task)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            if self.learners[task].since_publish:
                with contextlib.suppress(LeaseLostError):
                    await self.publish(task)  # what it learned, so the next one redoes nothing
            await self.store.task_release(task, self._tokens[task])
            self._forget(task)
            log.info("learner %s: hands task %s over (%d learners)", self.consumer, task, alive)
        for task in self.learners:
            if len(loops) >= share:
                break
            if task in loops:
                continue
            token = await self.store.task_lease(task, self.consumer, self.lease_s)
            if token is None:
                continue
            self._tokens[task] = token
            await self.resume_task(task)
            loops[task] = asyncio.create_task(self._loop(task))

    def _forget(self, task: str) -> None:
        """Another learner owns the task now: nothing of it stays here (a fresh task learner
        waits, should the task come back: it resumes from the versions, not from memory)."""
        self._unacked.pop(task, None)
        self.published.pop(task, None)
        self._tokens.pop(task, None)
        self.learners[task] = self._task_learner(task)

    async def _loop(self, task: str) -> None:
        while True:
            try:
                await self.step(task)
            except asyncio.CancelledError:
                raise
            except LeaseLostError as e:
                log.warning("learner %s: %s", self.consumer, e)
                return
            except Exception as e:
                log.warning("learner step for %s failed (%s); retrying", task, e)
                await asyncio.sleep(0.5)
            stop_if_cancelled()


async def run_learner_process(settings: Any, config: Config, consumer: str | None = None) -> None:
    """``cascade-gateway learn``: one learner for every gateway sharing the store."""
    store = open_store(settings)
    await store.start()
    pool = BackendPool(config, settings.models_dir)
    learner = Learner(config, pool, store, consumer=consumer, lease_s=settings.learner_lease_s)
    # SIGTERM (docker stop) and SIGINT end the run: its leases are released at once, so another
    # learner takes the tasks over without waiting for them to expire. As a container's PID 1
    # the process has no default action for SIGTERM: without this it ignored it until SIGKILL.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if main is not None:
            loop.add_signal_handler(sig, main.cancel)
    try:
        await learner.run()
    except asyncio.CancelledError:
        log.info("learner %s: stopped by a signal; its tasks are released", learner.consumer)
    finally:
        await pool.aclose()
        await store.close()
