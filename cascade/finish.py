"""Finishing a walk: choose the answer, count it, and remember it.

When the large LM failed, the most confident cheaper answer is served as ``degraded`` rather
than an error. A large-LM answer becomes a demonstration; every answer gets a request record
(so ``/feedback`` can find it) and, unless degraded, an outcome-cache entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cascade.counters import LevelStat, TaskStat, level_key
from cascade.demos import build_demo, level_record
from cascade.fuse import fuse, fused_logprobs
from cascade.levels import LevelOutput
from cascade.outcome import CascadeUnavailableError, Outcome, PromptTooLongError
from cascade.runtime import features_of
from cascade.semantic import record_of, semantic_after
from cascade.store.base import Store
from cascade.walk import Walk, count_agreement

Observer = Callable[[Outcome], None]
TokenLogprobs = tuple[list[str] | None, list[float] | None, list[dict[str, float]] | None]


async def finish(
    store: Store,
    walk: Walk,
    t0: float,
    use_cache: bool,
    request_ttl_s: int,
    observe: Observer,
) -> Outcome:
    """The walk is over: pick the answer, count it, remember it, return the outcome."""
    degraded = False
    if walk.answer is None:
        _refuse(store, walk, t0, observe)  # raises unless a cheaper answer can stand in
        degraded = True
    answer = walk.answer
    assert answer is not None
    walk.deltas[TaskStat.COST] = walk.cost
    by_large = answer.name == walk.rt.large.name and not degraded
    served = _served(walk, answer, by_large)
    store.count(walk.rt.name, walk.deltas)
    outcome = _outcome(walk, t0, answer, served, degraded)
    await remember(store, walk, outcome, served, by_large, use_cache, request_ttl_s)
    observe(outcome)
    return outcome


def _refuse(store: Store, walk: Walk, t0: float, observe: Observer) -> None:
    """No level answered. A prompt past the large LM's context is the request's fault (400);
    else the most confident cheaper answer is served, degraded; with none, 503."""
    rt = walk.rt
    if walk.too_long is not None:
        walk.deltas.pop(level_key(rt.large.name, LevelStat.FAILED), None)
        walk.deltas[TaskStat.BAD_INPUT] = 1
        store.count(rt.name, walk.deltas)
        raise PromptTooLongError(
            f"task {rt.name!r}: the prompt does not fit the large LM's context "
            f"({walk.too_long}); shorten the input or ask for fewer max_tokens"
        )
    fallback = [o for o in walk.outputs if o.ready and o.valid and o.name != rt.large.name]
    if not fallback:
        walk.deltas[TaskStat.UNAVAILABLE] = 1
        store.count(rt.name, walk.deltas)
        total = (time.perf_counter() - t0) * 1000
        observe(
            Outcome(
                request_id=walk.request_id,
                task=rt.name,
                output="",
                label=None,
                level="none",
                levels=walk.traces,
                cached=False,
                cost=walk.cost,
                total_ms=total,
                counters=walk.deltas,
            )
        )
        raise CascadeUnavailableError(
            f"task {rt.name!r}: no level could answer: the large LM gave no usable answer "
            f"({walk.large_failed or 'no answer'}) and no cheaper level had one ready"
        )
    walk.answer = max(fallback, key=lambda o: o.confidence)
    walk.deltas[TaskStat.DEGRADED] = 1
    # it answered after all: answered + deferred = seen
    walk.deltas[level_key(walk.answer.name, LevelStat.ANSWERED)] = 1
    walk.deltas.pop(level_key(walk.answer.name, LevelStat.DEFERRED), None)
    for t in walk.traces:
        t.answered = t.name == walk.answer.name
        t.deferred = t.deferred and not t.answered


def _served(walk: Walk, answer: LevelOutput, by_large: bool) -> LevelOutput:
    """What the client gets: the answer, or the large LM's fused with cheaper LMs' zero-shot
    ones (``params.fuse``). Agreement is counted against the large LM's own answer."""
    rt = walk.rt
    if not by_large:
        return answer
    walk.deltas[TaskStat.DEMOS] = 1
    if answer.label is not None:
        count_agreement(
            walk.deltas, answer.label, walk.outputs[:-1], walk.decisions, walk.explored_at
        )
    names = rt.config.fuse_names()
    served = fuse(answer, walk.outputs[:-1], names, rt.config.labels) if names else answer
    if served is not answer:
        walk.deltas[TaskStat.FUSED] = 1
        walk.deltas[TaskStat.FUSED_CHANGED] = float(served.label != answer.label)
    return served


def _token_logprobs(walk: Walk, answer: LevelOutput, served: LevelOutput) -> TokenLogprobs:
    """Token log-probabilities of the text served (a fused answer's own, not the large LM's)."""
    lm = answer.lm
    if lm is None:
        return None, None, None
    logprobs = lm.token_logprobs if lm.has_logprobs else None
    if served is not answer and logprobs is not None:
        return fused_logprobs(served, walk.rt.config.labels)
    return lm.tokens, logprobs, lm.top_logprobs


def _outcome(
    walk: Walk, t0: float, answer: LevelOutput, served: LevelOutput, degraded: bool
) -> Outcome:
    tokens, logprobs, top = _token_logprobs(walk, answer, served)
    total = (time.perf_counter() - t0) * 1000
    return Outcome(
        request_id=walk.request_id,
        task=walk.rt.name,
        output=served.text,
        label=served.label,
        level=answer.name,
        levels=walk.traces,
        cached=False,
        cost=walk.cost,
        degraded=degraded,
        version=walk.version,
        total_ms=total,
        overhead_ms=max(0.0, total - sum(t.latency_ms for t in walk.traces)),
        finish_reason=None if answer.lm is None else answer.lm.finish_reason,
        logprobs=logprobs,
        tokens=tokens,
        top_logprobs=top,
        counters=walk.deltas,
    )


async def remember(
    store: Store,
    walk: Walk,
    outcome: Outcome,
    served: LevelOutput,
    by_large: bool,
    use_cache: bool,
    request_ttl_s: int,
) -> None:
    """Cache the answer served, keep a record for feedback, and append the demonstration
    (the large LM's own answer, even when ``served`` fused it with cheaper ones)."""
    rt, answer = walk.rt, walk.answer
    assert answer is not None
    key = None
    writes = []
    if use_cache and walk.cache_keys and not outcome.degraded:
        key = walk.cache_keys[0] if by_large else walk.cache_keys[1]
        writes.append(
            store.cache_set(
                key,
                {"output": served.text, "label": served.label, "level": answer.name},
                rt.config.cache_ttl_s,
            )
        )
    records = {
        o.name: level_record(
            o,
            features_of(o, walk.outputs[:j]),
            walk.decisions.get(o.name),
            walk.explored_at.get(o.name, False),
            walk.explore_p,
        )
        for j, o in enumerate(walk.outputs)
        if o.name != rt.large.name
    }
    writes.append(
        store.put_record(
            f"req:{walk.request_id}",
            {
                "task": rt.name,
                "input": walk.query.text,
                "tenant": walk.tenant,
                "version": walk.version,
                "cache_key": key,
                "own_cache_key": walk.cache_keys[2]
                if walk.cache_keys and len(walk.cache_keys) > 2
                else None,
                "semantic": record_of(walk.semantic),
                "levels": records,
                "answer": {"level": answer.name, "label": served.label, "output": served.text},
            },
            request_ttl_s,
        )
    )
    learn_semantic = use_cache and by_large and not outcome.degraded
    if learn_semantic:
        writes.append(semantic_after(store, rt, walk.semantic, served, answer.name))
    done = await asyncio.gather(*writes)  # concurrent round trips, not one after the other
    if learn_semantic and done[-1]:
        outcome.counters = {**outcome.counters, **done[-1]}  # the metrics see the check
    if by_large:
        demo = build_demo(
            rt.name,
            walk.request_id,
            walk.query.text,
            answer,
            records,
            walk.version,
            walk.query.shared.get("embedding"),
            source="llm",
        )
        await store.append_demo(rt.name, demo)
