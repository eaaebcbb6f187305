"""One request's walk down a task's levels: call each, book what it said, let its policy decide.

The runner (``cascade.runner``) owns caching, streaming and what happens after the walk; this
module owns the walk itself and the counters it produces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from cascade.backends import BackendError, ContextLengthError
from cascade.levels import LevelOutput, Query
from cascade.outcome import LevelTrace
from cascade.runtime import TaskRuntime, features_of
from policies import Decision, Policy

log = logging.getLogger(__name__)


@dataclass
class Walk:
    """State of one request while it walks down the cascade."""

    rt: TaskRuntime
    q: Query
    request_id: str
    tenant: str | None
    cache_keys: tuple[str, str] | None  # (large-LM answer, cheaper answer at this version)
    version: int
    outputs: list[LevelOutput] = field(default_factory=list)
    traces: list[LevelTrace] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)
    explored_at: dict[str, bool] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    exploring: bool = False
    explore_p: float = 0.0  # the coin's probability for this request
    answer: LevelOutput | None = None
    large_failed: str | None = None
    too_long: str | None = None  # the large LM said the prompt does not fit its context
    skip_next: bool = False


async def walk_cheap_levels(p: Walk) -> None:
    p.deltas = {"requests": 1, "cost_llm_only": p.rt.large.cost}
    # one exploration coin per request: an explored item runs every level, and goes on to
    # the large LM whatever they say, so each level sees a uniform sample of its traffic
    want = max((pol.explore_probability for pol in p.rt.policies if pol is not None), default=0)
    p.explore_p = want
    p.exploring = want > 0 and p.rt.rng.random() < want
    i = 0
    while i < len(p.rt.levels) - 1:
        await try_level(p, i)
        if p.answer is not None:
            return
        i += 2 if p.skip_next else 1  # a router sent the request past the next level
        p.skip_next = False


async def try_level(p: Walk, i: int) -> None:
    remaining = p.q.deadline - time.monotonic() if p.q.deadline else None
    try:
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        out = await asyncio.wait_for(p.rt.levels[i].predict(p.q), timeout=remaining)
    except (BackendError, TimeoutError) as e:
        level_failed(p, i, e)
        return
    record_level(p, i, out)


def level_failed(p: Walk, i: int, e: Exception) -> None:
    level = p.rt.levels[i]
    msg = "deadline exceeded" if isinstance(e, TimeoutError) else str(e)
    log.warning("level %s of %s failed: %s", level.name, p.rt.name, msg)
    p.cost += level.cost
    pre = f"lvl:{level.name}:"
    p.deltas[pre + "seen"] = 1
    p.deltas[pre + "failed"] = 1
    p.traces.append(LevelTrace(level.name, False, None, 0.0, error=msg))
    if i == len(p.rt.levels) - 1:
        p.large_failed = msg
        p.deltas["llm_calls"] = 1
        if isinstance(e, ContextLengthError):
            p.too_long = msg


def record_level(p: Walk, i: int, out: LevelOutput) -> None:
    """Book a level's answer and let its policy decide (the last level always answers)."""
    level = p.rt.levels[i]
    pre = f"lvl:{level.name}:"
    last = i == len(p.rt.levels) - 1
    p.cost += level.cost
    p.outputs.append(out)
    p.q.shared.setdefault("outputs", {})[level.name] = out  # later levels may stack on it
    p.deltas[pre + "seen"] = 1
    p.deltas[pre + "latency_ms"] = out.latency_ms
    trace = LevelTrace(
        level.name,
        False,
        out.confidence if out.ready else None,
        out.latency_ms,
        valid=out.valid,
        ready=out.ready,
    )
    p.traces.append(trace)
    if not out.valid:
        p.deltas[pre + "invalid"] = 1
    if last:
        p.deltas["llm_calls"] = 1
        if out.valid:
            p.answer, trace.answered = out, True
            p.deltas[pre + "answered"] = 1
        else:
            p.large_failed = "the large LM answered outside the label set"
        return
    policy = p.rt.policies[i]
    assert policy is not None
    if getattr(level, "routes", False):
        _route(p, level.name, out, policy)
        return
    if out.ready and out.valid:
        d = policy.decide(features_of(out, p.outputs[:-1]))
        p.decisions[level.name] = d
        p.deltas[pre + "decided"] = 1  # shared: every gateway's exploration decays with it
        if policy.explorer is not None:
            policy.explorer.decided()
        if not d.defer and not p.exploring:
            p.answer, trace.answered = out, True
            p.deltas[pre + "answered"] = 1
            return
        if not d.defer:  # it would have answered: this item explores it
            trace.explored = True
            p.deltas[pre + "explored"] = 1
    trace.deferred = True
    p.deltas[pre + "deferred"] = 1
    p.explored_at[level.name] = p.exploring


def _route(p: Walk, name: str, out: LevelOutput, policy: Policy) -> None:
    """A pre-router never answers: its policy's "defer" sends the request past the next
    level (straight on); exploring means running the next level anyway, to keep learning."""
    pre = f"lvl:{name}:"
    p.deltas[pre + "deferred"] = 1
    if not out.ready:
        return
    d = policy.decide(features_of(out, []))
    p.decisions[name] = d
    if d.defer and not p.exploring:
        p.skip_next = True
        p.deltas[pre + "routed"] = 1
        p.traces[-1].deferred = True


def count_agreement(
    deltas: dict[str, float],
    large_label: str,
    cheaper: list[LevelOutput],
    decisions: dict[str, Decision],
    explored_at: dict[str, bool],
) -> None:
    """Agreement of each cheaper level with the large LM. An exploration sample that reached
    a level genuinely (every earlier level deferred on its own) and that the level would have
    answered is a uniform draw of what the level answers: the unbiased estimate."""
    genuine = True
    for o in cheaper:
        d = decisions.get(o.name)
        if not (o.ready and o.valid and o.label is not None) or d is None:
            genuine = genuine and (d is None or d.defer)
            continue
        pre = f"lvl:{o.name}:"
        agree = float(o.label == large_label)
        deltas[pre + "agree_n"] = 1
        deltas[pre + "agree"] = agree
        if genuine and explored_at.get(o.name) and not d.defer:
            deltas[pre + "est_n"] = 1
            deltas[pre + "est_agree"] = agree
        genuine = genuine and d.defer
