"""The cascade runner: a request goes through a task's levels until a policy says answer.

request -> outcome cache -> level 1 -> policy -> level 2 -> ... -> large LM -> response.
Off the hot path: every large-LM answer becomes a demonstration in the store; the learner turns
demonstrations into new versions, which ``refresh`` hot-loads into levels and policies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from cascade.aio import Admission
from cascade.backends import BackendError, BackendPool
from cascade.config import Config
from cascade.counters import LevelStat, TaskStat, level_key
from cascade.finish import finish
from cascade.levels import LevelOutput, Query, build_level
from cascade.outcome import (
    CascadeError,
    CascadeUnavailableError,
    InputTooLargeError,
    Outcome,
    OverloadedError,
    UnknownTaskError,
    cache_hit,
)
from cascade.prompts import Message, render_messages
from cascade.runtime import TaskRuntime, build_policy, fingerprint, normalise_input
from cascade.semantic import build_semantic, semantic_hit, semantic_lookup, semantic_sync
from cascade.semcache import Lookup
from cascade.store.base import Store
from cascade.versions import load_state
from cascade.walk import Walk, level_failed, record_level, try_level, walk_cheap_levels

__all__ = [
    "Ask",
    "Cascade",
    "CascadeError",
    "CascadeUnavailableError",
    "InputTooLargeError",
    "Outcome",
    "StreamEvent",
    "UnknownTaskError",
]

log = logging.getLogger(__name__)

Observer = Callable[[Outcome], None]


@dataclass(frozen=True)
class Ask:
    """How a request wants its answer, beside the task and the text."""

    max_tokens: int | None = None  # None: the task's own
    temperature: float = 0.0
    use_cache: bool = True  # False: neither read nor write the outcome cache
    tenant: str | None = None  # the caller's key id: its own cache scope and records
    messages: list[Message] | None = None  # a chat to send instead of the task's prompt
    logprobs: bool = False  # the client wants token log-probabilities


DEFAULT_ASK = Ask()


@dataclass
class StreamEvent:
    """One event of ``Cascade.stream``: the answering level (first), a text delta, or the
    final outcome (last)."""

    delta: str = ""
    level: str | None = None
    cached: bool | None = None
    overhead_ms: float | None = None
    outcome: Outcome | None = None
    cache: str | None = None  # which cache answered (first event of a hit)
    similarity: float | None = None  # a semantic hit's cosine


class Cascade:
    """All tasks of a configuration, their levels and the store they share."""

    def __init__(self, config: Config, pool: BackendPool, store: Store) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.tasks: dict[str, TaskRuntime] = {}
        for name, task_cfg in config.tasks.items():
            levels = [build_level(level_cfg, task_cfg, pool) for level_cfg in task_cfg.levels]
            policies = [
                build_policy(level_cfg) if i < len(levels) - 1 else None
                for i, level_cfg in enumerate(task_cfg.levels)
            ]
            self.tasks[name] = TaskRuntime(
                name,
                task_cfg,
                levels,
                policies,
                fingerprint(config, task_cfg),
                semantic=build_semantic(name, task_cfg, pool),
            )
        self.request_ttl_s = 86_400
        self.observers: list[Observer] = []
        self.admission = Admission(config.defaults.max_inflight, config.defaults.queue_timeout_s)

    def task(self, name: str) -> TaskRuntime:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r}; known tasks: {', '.join(sorted(self.tasks))}"
            ) from None

    async def warmup(self) -> None:
        """First-request work (vocabulary scans, lazy allocations) done before serving."""
        for rt in self.tasks.values():
            for lv in rt.levels:
                await anyio.to_thread.run_sync(lv.warmup)

    async def aclose(self) -> None:
        for rt in self.tasks.values():
            for lv in rt.levels:
                await lv.aclose()
        await self.pool.aclose()

    # ------------------------------------------------------------------ hot reload

    async def refresh(self) -> dict[str, int]:
        """Adopt each task's newest learned version and the operator's latest settings, and
        the shared count of items each level decided on."""
        loaded = {}
        for name, rt in self.tasks.items():
            try:
                settings = await self.store.table_get("settings", name)
                latest = await self.store.latest_version(name)
                blob = await self.store.get_version(name, latest) if latest > rt.version else None
            except Exception as e:  # the store is down: keep serving what we have
                self.store.errors += 1
                log.debug("refresh failed: %s", e)
                continue
            async with rt.lock:
                if settings and int(settings.get("revision", 0)) > rt.settings_revision:
                    rt.overrides = settings.get("levels", {})
                    rt.settings_revision = int(settings["revision"])
                    rt.apply_overrides()
                if blob is None:
                    continue
                state = load_state(blob)
                if state.labels != rt.config.labels:
                    log.warning("version %d of %s has other labels; ignored", latest, name)
                    continue
                rt.apply(state, latest)
                loaded[name] = latest
        await self.sync_traffic()
        await self.sync_semantic()
        return loaded

    async def sync_semantic(self) -> None:
        """Index the semantic-cache entries every gateway appended since the last sync, and
        learn from the comparisons they logged."""
        for rt in self.tasks.values():
            if rt.semantic is None:
                continue
            try:
                await semantic_sync(self.store, rt.semantic)
            except Exception as e:  # the store is down: serve from what is indexed
                self.store.errors += 1
                log.debug("semantic sync failed: %s", e)

    async def sync_traffic(self) -> None:
        """Policies whose exploration decays with traffic count every gateway's: the shared
        counters hold the items each level decided on, so a new or restarted gateway does not
        explore as if the level were new (the local count covers what is not flushed yet)."""
        for name, rt in self.tasks.items():
            pols = [
                (lv.name, pol.explorer)
                for lv, pol in zip(rt.levels, rt.policies, strict=True)
                if pol is not None and pol.explorer is not None and pol.explorer.by_traffic
            ]
            if not pols:
                continue
            try:
                counters = await self.store.read_counters(name)
            except Exception as e:  # the store is down: count locally meanwhile
                self.store.errors += 1
                log.debug("traffic sync failed: %s", e)
                continue
            for level, explorer in pols:
                shared = int(counters.get(level_key(level, LevelStat.DECIDED), 0))
                explorer.traffic = max(explorer.traffic, shared)

    # ------------------------------------------------------------------ serving

    def cache_keys(
        self, rt: TaskRuntime, text: str, max_tokens: int, temperature: float, scope: str
    ) -> tuple[str, str]:
        """(key of a large-LM answer, which no learning changes; key of a cheaper level's
        answer, which is only good for the learned version that produced it)."""
        head = json.dumps(
            [rt.name, normalise_input(text), max_tokens, round(temperature, 4), rt.fingerprint],
            ensure_ascii=False,
        )[:-1]  # one encoding for both keys: only the version differs

        def key(version: int | None) -> str:
            body = f"{head}, {json.dumps(version)}, {json.dumps(scope, ensure_ascii=False)}]"
            return "cache:" + hashlib.sha256(body.encode()).hexdigest()

        return key(None), key(rt.version)

    def _start(self, task: str, text: str, ask: Ask) -> tuple[TaskRuntime, Query, tuple[str, ...]]:
        rt = self.task(task)
        limit = self.config.defaults.max_input_bytes
        size = len(text.encode("utf-8"))
        if size > limit:
            raise InputTooLargeError(f"input is {size} bytes; the limit is {limit} bytes")
        max_tokens = ask.max_tokens or rt.config.max_tokens
        deadline = time.monotonic() + self.config.defaults.request_timeout_s
        q = Query(
            rt.name,
            text,
            ask.messages or render_messages(rt.config.prompt, text),
            max_tokens,
            ask.temperature,
            deadline,
            want_logprobs=ask.logprobs,
        )
        shared = rt.config.shared_cache or ask.tenant is None
        scope = "shared" if shared else f"tenant:{ask.tenant}"
        keys: tuple[str, ...] = self.cache_keys(rt, text, max_tokens, ask.temperature, scope)
        if rt.config.shared_cache and ask.tenant is not None:
            # where this tenant's /feedback corrections go: ahead of the shared answers, for it
            own = self.cache_keys(rt, text, max_tokens, ask.temperature, f"tenant:{ask.tenant}")
            keys = (*keys, own[0])
        return rt, q, keys

    async def _cached(self, rt: TaskRuntime, keys: tuple[str, ...], t0: float) -> Outcome | None:
        order = [*keys[2:], *keys[:2]]  # a tenant's own correction first
        hit = next((h for h in await self.store.cache_get_many(order) if h), None)
        if hit is None:
            return None
        answer = (hit["output"], hit["label"], hit["level"])
        out = cache_hit(self.store, rt, answer, t0, "exact")
        self._observe(out)
        return out

    async def run(self, task: str, text: str, ask: Ask = DEFAULT_ASK) -> Outcome:
        """Answer one request."""
        t0 = time.perf_counter()
        rt, q, keys = self._start(task, text, ask)
        if ask.use_cache and (hit := await self._cached(rt, keys, t0)) is not None:
            return hit
        look = await semantic_lookup(rt, q, ask.tenant, ask.messages) if ask.use_cache else None
        if look is not None and look.decision.serve:
            return await self._semantic_hit(rt, look, t0)
        await self._admit(rt)
        try:
            walk = self._walk(rt, q, keys, ask)
            walk.semantic = look
            await walk_cheap_levels(walk)
            if walk.answer is None:
                await try_level(walk, len(rt.levels) - 1)
            return await self._finish(walk, t0, ask.use_cache)
        finally:
            self.admission.leave()

    async def _semantic_hit(self, rt: TaskRuntime, look: Lookup, t0: float) -> Outcome:
        out = await semantic_hit(self.store, rt, look, t0)
        self._observe(out)
        return out

    def _walk(self, rt: TaskRuntime, q: Query, keys: tuple[str, ...], ask: Ask) -> Walk:
        cache_keys = keys if ask.use_cache else None
        return Walk(rt, q, uuid.uuid4().hex, ask.tenant, cache_keys, rt.version)

    async def _admit(self, rt: TaskRuntime) -> None:
        """A turn to run the models, or 503 when too many requests already wait for one."""
        if not await self.admission.enter():
            self.store.count(rt.name, {TaskStat.REQUESTS: 1, TaskStat.SHED: 1})
            raise OverloadedError(
                f"the gateway is overloaded: {self.admission.limit} requests are running models "
                f"and no turn came within {self.admission.timeout_s:g} s; retry shortly"
            )

    async def stream(
        self, task: str, text: str, ask: Ask = DEFAULT_ASK
    ) -> AsyncIterator[StreamEvent]:
        """Events: first the answering level (once known), then text deltas, then the outcome.

        A cheaper level's text is only sent once its policy accepted it, so nothing a level
        deferred on leaks to the client; the large LM's text streams as it is generated."""
        t0 = time.perf_counter()
        rt, q, keys = self._start(task, text, ask)
        hit = await self._cached(rt, keys, t0) if ask.use_cache else None
        look = None
        if hit is None and ask.use_cache:
            look = await semantic_lookup(rt, q, ask.tenant, ask.messages)
            if look is not None and look.decision.serve:
                hit = await self._semantic_hit(rt, look, t0)
        if hit is not None:
            yield StreamEvent(
                level=hit.level,
                cached=True,
                overhead_ms=hit.overhead_ms,
                cache=hit.cache,
                similarity=hit.similarity,
            )
            yield StreamEvent(delta=hit.output)
            yield StreamEvent(outcome=hit)
            return
        await self._admit(rt)
        try:
            walk = self._walk(rt, q, keys, ask)
            walk.semantic = look
            async for ev in self._stream_walk(walk, t0, ask.use_cache):
                yield ev
        finally:
            self.admission.leave()

    async def _stream_walk(
        self, walk: Walk, t0: float, use_cache: bool
    ) -> AsyncIterator[StreamEvent]:
        rt = walk.rt
        await walk_cheap_levels(walk)
        overhead = (time.perf_counter() - t0) * 1000 - sum(t.latency_ms for t in walk.traces)
        if walk.answer is not None:
            yield StreamEvent(level=walk.answer.name, cached=False, overhead_ms=overhead)
            done = await self._finish(walk, t0, use_cache)
            yield StreamEvent(delta=done.output)
            yield StreamEvent(outcome=done)
            return
        last = len(rt.levels) - 1
        final: LevelOutput | None = None
        started = False
        try:
            async for delta, out in rt.large.stream(walk.query):
                if out is not None:
                    final = out
                elif delta:
                    if not started:
                        started = True
                        yield StreamEvent(level=rt.large.name, cached=False, overhead_ms=overhead)
                    yield StreamEvent(delta=delta)
        except (BackendError, TimeoutError) as e:
            level_failed(walk, last, e)
            if started:
                # part of the answer is out and cannot be taken back: the stream ends with an
                # error, and nothing of it is cached or learned from
                walk.deltas[TaskStat.UNAVAILABLE] = 1
                walk.deltas[TaskStat.TRUNCATED] = 1
                self.store.count(rt.name, walk.deltas)
                raise CascadeUnavailableError(
                    f"the large LM failed mid-answer: {walk.large_failed}"
                ) from e
        if final is not None:
            record_level(walk, last, final)
        done = await self._finish(walk, t0, use_cache)  # may degrade, or raise if nothing answered
        if not started:
            yield StreamEvent(level=done.level, cached=False, overhead_ms=overhead)
            yield StreamEvent(delta=done.output)
        yield StreamEvent(outcome=done)

    # ------------------------------------------------------------------ the walk

    async def _finish(self, walk: Walk, t0: float, use_cache: bool) -> Outcome:
        return await finish(self.store, walk, t0, use_cache, self.request_ttl_s, self._observe)

    def _observe(self, outcome: Outcome) -> None:
        for obs in self.observers:
            try:
                obs(outcome)
            except Exception:  # an observer must never break serving
                log.exception("observer failed")
