"""Finishing a walk: choose the answer, count it, and remember it.

When the large LM failed, the most confident cheaper answer is served as ``degraded`` rather
than an error. A large-LM answer becomes a demonstration; every answer gets a request record
(so ``/feedback`` can find it) and, unless degraded, an outcome-cache entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cascade.demos import build_demo, level_record
from cascade.fuse import fuse, fused_logprobs
from cascade.levels import LevelOutput
from cascade.outcome import CascadeUnavailableError, Outcome, PromptTooLongError
from cascade.runtime import features_of
from cascade.store.base import Store
from cascade.walk import Walk, count_agreement


async def finish(
    store: Store,
    p: Walk,
    t0: float,
    use_cache: bool,
    request_ttl_s: int,
    observe: Callable[[Outcome], None],
) -> Outcome:
    """The walk is over: pick the answer, count it, remember it, return the outcome."""
    rt = p.rt
    degraded = False
    if p.answer is None and p.too_long is not None:
        # the request's fault, not an outage: counted as bad input, answered with a 4xx
        p.deltas.pop(f"lvl:{rt.large.name}:failed", None)
        p.deltas["bad_input"] = 1
        store.count(rt.name, p.deltas)
        raise PromptTooLongError(
            f"task {rt.name!r}: the prompt does not fit the large LM's context ({p.too_long}); "
            "shorten the input or ask for fewer max_tokens"
        )
    if p.answer is None:
        fallback = [o for o in p.outputs if o.ready and o.valid and o.name != rt.large.name]
        if not fallback:
            p.deltas["unavailable"] = 1
            store.count(rt.name, p.deltas)
            total = (time.perf_counter() - t0) * 1000
            observe(
                Outcome(
                    p.request_id,
                    rt.name,
                    "",
                    None,
                    "none",
                    p.traces,
                    cached=False,
                    cost=p.cost,
                    total_ms=total,
                    counters=p.deltas,
                )
            )
            raise CascadeUnavailableError(
                f"task {rt.name!r}: no level could answer: the large LM gave no usable answer "
                f"({p.large_failed or 'no answer'}) and no cheaper level had one ready"
            )
        p.answer = max(fallback, key=lambda o: o.confidence)
        degraded = True
        p.deltas["degraded"] = 1
        pre = f"lvl:{p.answer.name}:"
        p.deltas[pre + "answered"] = 1  # it answered after all: answered + deferred = seen
        p.deltas.pop(pre + "deferred", None)
        for t in p.traces:
            t.answered = t.name == p.answer.name
            t.deferred = t.deferred and not t.answered
    answer = p.answer
    p.deltas["cost"] = p.cost
    by_large = answer.name == rt.large.name and not degraded
    if by_large:
        p.deltas["demos"] = 1
        if answer.label is not None:
            count_agreement(p.deltas, answer.label, p.outputs[:-1], p.decisions, p.explored_at)
    names = rt.config.fuse_names() if by_large else []
    served = fuse(answer, p.outputs[:-1], names, rt.config.labels) if names else answer
    if served is not answer:
        p.deltas["fused"] = 1
        p.deltas["fused_changed"] = float(served.label != answer.label)
    store.count(rt.name, p.deltas)
    lm = answer.lm
    tokens, logprobs, top = (
        (None, None, None)
        if lm is None
        else (
            lm.tokens,
            lm.token_logprobs if lm.has_logprobs else None,
            lm.top_logprobs,
        )
    )
    if served is not answer and logprobs is not None:  # what was served, not the large LM's
        tokens, logprobs, top = fused_logprobs(served, rt.config.labels)
    total = (time.perf_counter() - t0) * 1000
    outcome = Outcome(
        p.request_id,
        rt.name,
        served.text,
        served.label,
        answer.name,
        p.traces,
        cached=False,
        cost=p.cost,
        degraded=degraded,
        version=p.version,
        total_ms=total,
        overhead_ms=max(0.0, total - sum(t.latency_ms for t in p.traces)),
        finish_reason=None if lm is None else lm.finish_reason,
        logprobs=logprobs,
        tokens=tokens,
        top_logprobs=top,
        counters=p.deltas,
    )
    await remember(store, p, outcome, served, by_large, use_cache, request_ttl_s)
    observe(outcome)
    return outcome


async def remember(
    store: Store,
    p: Walk,
    outcome: Outcome,
    served: LevelOutput,
    by_large: bool,
    use_cache: bool,
    request_ttl_s: int,
) -> None:
    """Cache the answer served, keep a record for feedback, and append the demonstration
    (the large LM's own answer, even when ``served`` fused it with cheaper ones)."""
    rt, answer = p.rt, p.answer
    assert answer is not None
    key = None
    writes = []
    if use_cache and p.cache_keys and not outcome.degraded:
        key = p.cache_keys[0] if by_large else p.cache_keys[1]
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
            features_of(o, p.outputs[:j]),
            p.decisions.get(o.name),
            p.explored_at.get(o.name, False),
            p.explore_p,
        )
        for j, o in enumerate(p.outputs)
        if o.name != rt.large.name
    }
    writes.append(
        store.put_record(
            f"req:{p.request_id}",
            {
                "task": rt.name,
                "input": p.q.text,
                "tenant": p.tenant,
                "version": p.version,
                "cache_key": key,
                "levels": records,
                "answer": {"level": answer.name, "label": served.label, "output": served.text},
            },
            request_ttl_s,
        )
    )
    await asyncio.gather(*writes)  # concurrent round trips, not one after the other
    if by_large:
        demo = build_demo(
            rt.name,
            p.request_id,
            p.q.text,
            answer,
            records,
            p.version,
            p.q.shared.get("embedding"),
            source="llm",
        )
        await store.append_demo(rt.name, demo)
