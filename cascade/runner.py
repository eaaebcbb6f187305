"""The cascade runner: a request goes through a task's levels until a policy says answer.

request -> outcome cache -> level 1 -> policy -> level 2 -> ... -> large LM -> response.
Off the hot path: every large-LM answer becomes a demonstration in the store; the learner turns
demonstrations into new versions, which ``refresh_versions`` hot-loads into levels and policies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any

from cascade.backends import BackendError, BackendPool
from cascade.config import Config, TaskConfig
from cascade.demos import build_demo, level_record
from cascade.levels import Level, LevelOutput, Query, build_level
from cascade.prompts import render_messages
from cascade.store.base import Store
from cascade.versions import TaskState, load_state
from policies import Decision, Features, Policy, make_policy

log = logging.getLogger(__name__)


class CascadeError(Exception):
    """Base of errors a client can act on; ``status`` is the HTTP status to answer with."""

    status = 400


class UnknownTaskError(CascadeError):
    status = 404


class InputTooLargeError(CascadeError):
    status = 413


class CascadeUnavailableError(CascadeError):
    """No level could answer (the large LM failed and no cheaper answer exists)."""

    status = 503


@dataclass
class LevelTrace:
    name: str
    answered: bool
    confidence: float | None
    latency_ms: float
    deferred: bool = False
    explored: bool = False
    valid: bool = True
    ready: bool = True
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "answered": self.answered,
            "confidence": None if self.confidence is None else round(self.confidence, 6),
            "latency_ms": round(self.latency_ms, 3),
            "ready": self.ready,
            "valid": self.valid,
            "explored": self.explored,
            "error": self.error,
        }


@dataclass
class Outcome:
    request_id: str
    task: str
    output: str
    label: str | None
    level: str
    levels: list[LevelTrace]
    cached: bool
    cost: float
    degraded: bool = False
    version: int = 0
    overhead_ms: float = 0.0
    total_ms: float = 0.0
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "task": self.task,
            "output": self.output,
            "label": self.label,
            "level": self.level,
            "levels": [t.to_json() for t in self.levels],
            "cached": self.cached,
            "cost": round(self.cost, 6),
            "degraded": self.degraded,
            "version": self.version,
        }


@dataclass
class TaskRuntime:
    """A task's live levels and policies, and the learned version they carry."""

    name: str
    config: TaskConfig
    levels: list[Level]
    policies: list[Policy | None]
    fingerprint: str
    version: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def large(self) -> Level:
        return self.levels[-1]

    def apply(self, state: TaskState, version: int) -> None:
        for lv in self.levels:
            if lv.name in state.levels:
                lv.load_state(state.levels[lv.name])
        for lv, pol in zip(self.levels, self.policies, strict=True):
            if pol is not None and lv.name in state.policies:
                pol.load_state(state.policies[lv.name])
        self.version = version


def normalise_input(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def build_policy(level_cfg: Any) -> Policy:
    pc = level_cfg.policy
    params = pc.model_dump(exclude={"kind"})
    return make_policy(pc.kind, **params)


def features_of(out: LevelOutput, before: list[LevelOutput]) -> Features:
    """The policy's view of a level's answer, with agreement with the levels before it."""
    extra = dict(out.extra)
    voters = [b for b in before if b.ready and b.valid and b.label is not None]
    if out.label is not None and voters:
        extra["agree_prev"] = sum(b.label == out.label for b in voters) / len(voters)
    lm = out.lm
    return Features(
        confidence=out.confidence,
        probs=out.probs,
        token_logprobs=None if lm is None else _arr(lm.token_logprobs),
        entropies=None if lm is None or lm.entropies is None else _arr(lm.entropies),
        extra=extra,
    )


def _count_agreement(
    deltas: dict[str, float],
    large_label: str,
    cheaper: list[LevelOutput],
    decisions: dict[str, Decision],
) -> None:
    """Agreement of each cheaper level with the large LM; explored items give the unbiased
    estimate of agreement among the items a level would have answered."""
    for o in cheaper:
        if not (o.ready and o.valid and o.label is not None):
            continue
        p = f"lvl:{o.name}:"
        agree = float(o.label == large_label)
        deltas[p + "agree_n"] = 1
        deltas[p + "agree"] = agree
        d = decisions.get(o.name)
        if d is not None and d.explored:
            deltas[p + "est_n"] = 1
            deltas[p + "est_agree"] = agree


def _arr(xs: list[float]) -> Any:
    import numpy as np

    return np.asarray(xs, dtype=np.float64)


class Cascade:
    """All tasks of a configuration, their levels and the store they share."""

    def __init__(self, config: Config, pool: BackendPool, store: Store) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.tasks: dict[str, TaskRuntime] = {}
        for name, tc in config.tasks.items():
            levels = [build_level(lc, tc, pool) for lc in tc.levels]
            policies = [
                build_policy(lc) if i < len(levels) - 1 else None for i, lc in enumerate(tc.levels)
            ]
            fp = hashlib.sha256(
                json.dumps(
                    [
                        tc.model_dump(mode="json"),
                        {
                            lc.backend: config.backends[lc.backend].model_dump(
                                mode="json", exclude={"api_key", "base_url"}
                            )
                            for lc in tc.levels
                            if lc.backend
                        },
                    ],
                    sort_keys=True,
                ).encode()
            ).hexdigest()[:16]
            self.tasks[name] = TaskRuntime(name, tc, levels, policies, fp)
        self.request_ttl_s = 86_400
        self.demos_written = 0

    def task(self, name: str) -> TaskRuntime:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r}; known tasks: {', '.join(sorted(self.tasks))}"
            ) from None

    async def warmup(self) -> None:
        """First-request work (vocabulary scans, lazy allocations) done before serving."""
        import anyio

        for rt in self.tasks.values():
            for lv in rt.levels:
                await anyio.to_thread.run_sync(lv.warmup)

    async def aclose(self) -> None:
        for rt in self.tasks.values():
            for lv in rt.levels:
                await lv.aclose()
        await self.pool.aclose()

    # ------------------------------------------------------------------ versions

    async def refresh_versions(self) -> dict[str, int]:
        """Load every task's newest published version, if newer than the one in use."""
        loaded = {}
        for name, rt in self.tasks.items():
            try:
                latest = await self.store.latest_version(name)
                if latest <= rt.version:
                    continue
                blob = await self.store.get_version(name, latest)
            except Exception as e:  # the store is down: keep serving what we have
                self.store.errors += 1
                log.debug("version check failed: %s", e)
                continue
            if blob is None:
                continue
            state = load_state(blob)
            if state.labels != rt.config.labels:
                log.warning("version %d of %s has other labels; ignored", latest, name)
                continue
            async with rt.lock:
                rt.apply(state, latest)
            loaded[name] = latest
        return loaded

    # ------------------------------------------------------------------ serving

    def cache_key(
        self, rt: TaskRuntime, text: str, max_tokens: int, temperature: float, scope: str
    ) -> str:
        body = json.dumps(
            [
                rt.name,
                normalise_input(text),
                max_tokens,
                round(temperature, 4),
                rt.fingerprint,
                rt.version,
                scope,
            ],
            ensure_ascii=False,
        )
        return "cache:" + hashlib.sha256(body.encode()).hexdigest()

    async def run(
        self,
        task: str,
        text: str,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        use_cache: bool = True,
        tenant: str | None = None,
    ) -> Outcome:
        t_start = time.perf_counter()
        rt = self.task(task)
        limit = self.config.defaults.max_input_bytes
        size = len(text.encode("utf-8"))
        if size > limit:
            raise InputTooLargeError(f"input is {size} bytes; the limit is {limit} bytes")
        max_tokens = max_tokens or rt.config.max_tokens
        scope = "shared" if rt.config.shared_cache or tenant is None else f"tenant:{tenant}"
        key = self.cache_key(rt, text, max_tokens, temperature, scope)
        request_id = uuid.uuid4().hex
        large_cost = rt.large.cost
        if use_cache:
            hit = await self.store.cache_get(key)
            if hit is not None:
                self.store.count(
                    task, {"requests": 1, "cache_hits": 1, "cost_llm_only": large_cost}
                )
                total = (time.perf_counter() - t_start) * 1000
                return Outcome(
                    request_id=request_id,
                    task=task,
                    output=hit["output"],
                    label=hit["label"],
                    level=hit["level"],
                    levels=[],
                    cached=True,
                    cost=0.0,
                    version=rt.version,
                    overhead_ms=total,
                    total_ms=total,
                )
        outcome = await self._cascade(
            rt, text, max_tokens, temperature, request_id, tenant, key if use_cache else None
        )
        outcome.total_ms = (time.perf_counter() - t_start) * 1000
        outcome.overhead_ms = max(0.0, outcome.total_ms - sum(t.latency_ms for t in outcome.levels))
        if use_cache and not outcome.degraded:
            await self.store.cache_set(
                key,
                {"output": outcome.output, "label": outcome.label, "level": outcome.level},
                rt.config.cache_ttl_s,
            )
        return outcome

    async def _cascade(
        self,
        rt: TaskRuntime,
        text: str,
        max_tokens: int,
        temperature: float,
        request_id: str,
        tenant: str | None,
        cache_key: str | None,
    ) -> Outcome:
        cfg = rt.config
        deadline = time.monotonic() + self.config.defaults.request_timeout_s
        q = Query(
            rt.name, text, render_messages(cfg.prompt, text), max_tokens, temperature, deadline
        )
        version = rt.version
        outputs: list[LevelOutput] = []
        traces: list[LevelTrace] = []
        decisions: dict[str, Decision] = {}
        deltas: dict[str, float] = {"requests": 1, "cost_llm_only": rt.large.cost}
        cost = 0.0
        answer: LevelOutput | None = None
        large_failed: str | None = None
        n = len(rt.levels)
        for i, (level, policy) in enumerate(zip(rt.levels, rt.policies, strict=True)):
            last = i == n - 1
            p = f"lvl:{level.name}:"
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                out = await asyncio.wait_for(level.predict(q), timeout=remaining)
            except (BackendError, TimeoutError) as e:
                msg = "deadline exceeded" if isinstance(e, TimeoutError) else str(e)
                log.warning("level %s of %s failed: %s", level.name, rt.name, msg)
                cost += level.cost
                deltas[p + "seen"] = 1
                deltas[p + "failed"] = 1
                traces.append(LevelTrace(level.name, False, None, 0.0, error=msg))
                if last:
                    large_failed = msg
                    deltas["llm_calls"] = 1
                continue
            cost += level.cost
            outputs.append(out)
            deltas[p + "seen"] = 1
            deltas[p + "latency_ms"] = out.latency_ms
            trace = LevelTrace(
                level.name,
                False,
                out.confidence if out.ready else None,
                out.latency_ms,
                valid=out.valid,
                ready=out.ready,
            )
            traces.append(trace)
            if not out.valid:
                deltas[p + "invalid"] = 1
            if last:
                deltas["llm_calls"] = 1
                if out.valid:
                    answer = out
                    trace.answered = True
                    deltas[p + "answered"] = 1
                else:
                    large_failed = "the large LM answered outside the label set"
                break
            assert policy is not None
            if out.ready and out.valid:
                d = policy.decide(features_of(out, outputs[:-1]))
                decisions[level.name] = d
                if not d.defer:
                    answer = out
                    trace.answered = True
                    deltas[p + "answered"] = 1
                    break
                trace.explored = d.explored
                if d.explored:
                    deltas[p + "explored"] = 1
            trace.deferred = True
            deltas[p + "deferred"] = 1

        degraded = False
        if answer is None:
            fallback = [o for o in outputs if o.ready and o.valid and o.name != rt.large.name]
            if not fallback:
                deltas["unavailable"] = 1
                self.store.count(rt.name, deltas)
                raise CascadeUnavailableError(
                    f"task {rt.name!r}: no level could answer ({large_failed or 'no answer'}); "
                    "the large LM is unreachable or failing and no cheaper answer exists"
                )
            answer = max(fallback, key=lambda o: o.confidence)
            degraded = True
            deltas["degraded"] = 1
            for t in traces:
                if t.name == answer.name:
                    t.answered = True
        deltas["cost"] = cost
        by_large = answer.name == rt.large.name and not degraded
        if by_large and answer.label is not None:
            _count_agreement(deltas, answer.label, outputs[:-1], decisions)
        if by_large:
            deltas["demos"] = 1
        self.store.count(rt.name, deltas)

        lm = answer.lm
        outcome = Outcome(
            request_id=request_id,
            task=rt.name,
            output=answer.text,
            label=answer.label,
            level=answer.name,
            levels=traces,
            cached=False,
            cost=cost,
            degraded=degraded,
            version=version,
            logprobs=None if lm is None or not lm.has_logprobs else lm.token_logprobs,
            top_logprobs=None if lm is None else lm.top_logprobs,
        )
        records = {
            o.name: level_record(o, features_of(o, outputs[:j]), decisions.get(o.name))
            for j, o in enumerate(outputs)
            if o.name != rt.large.name
        }
        await self.store.put_record(
            f"req:{request_id}",
            {
                "task": rt.name,
                "input": text,
                "tenant": tenant,
                "version": version,
                "cache_key": None if degraded else cache_key,
                "levels": records,
                "answer": {"level": answer.name, "label": answer.label, "output": answer.text},
            },
            self.request_ttl_s,
        )
        if by_large:
            demo = build_demo(
                rt.name,
                request_id,
                text,
                answer,
                records,
                version,
                q.shared.get("embedding"),
                source="llm",
            )
            await self.store.append_demo(rt.name, demo)
            self.demos_written += 1
        return outcome
