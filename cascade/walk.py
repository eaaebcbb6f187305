"""One request's walk down a task's levels: call each, book what it said, let its policy decide.

The runner (``cascade.runner``) owns caching, streaming and what happens after the walk; this
module owns the walk itself and the counters it produces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial

from cascade.backends import BackendError, ContextLengthError
from cascade.counters import LevelStat, TaskStat, level_key
from cascade.levels import LevelOutput, Query
from cascade.outcome import LevelTrace
from cascade.runtime import TaskRuntime, features_of
from cascade.semcache import Lookup
from policies import Decision, Policy

log = logging.getLogger(__name__)


@dataclass
class Walk:
    """State of one request while it walks down the cascade."""

    rt: TaskRuntime
    query: Query
    request_id: str
    tenant: str | None
    # (large-LM answer, cheaper answer at this version[, the tenant's own corrections])
    cache_keys: tuple[str, ...] | None
    version: int
    outputs: list[LevelOutput] = field(default_factory=list)
    traces: list[LevelTrace] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)
    explored_at: dict[str, bool] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    exploring: bool = False
    explore_p: float = 0.0  # the coin's probability for this request
    sampled: set[str] = field(default_factory=set)  # levels run as their learning sample
    answer: LevelOutput | None = None
    large_failed: str | None = None
    too_long: str | None = None  # the large LM said the prompt does not fit its context
    skip_next: bool = False
    semantic: Lookup | None = None  # the semantic cache's lookup (a miss, or a verification)

    def explores(self, level: str) -> bool:
        """Whether ``level``'s answer must go on to the large LM: the request's coin, or the
        level's own learning sample (which explores that level only)."""
        return self.exploring or level in self.sampled


async def walk_cheap_levels(walk: Walk) -> None:
    walk.deltas = {TaskStat.REQUESTS: 1, TaskStat.COST_LLM_ONLY: walk.rt.large.cost}
    if walk.semantic is not None and walk.semantic.decision.verify:
        return  # a semantic hit's check: the large LM's own answer is the reference
    # one exploration coin per request: an explored item runs every level, and goes on to
    # the large LM whatever they say, so each level sees a uniform sample of its traffic
    want = max((pol.explore_probability for pol in walk.rt.policies if pol is not None), default=0)
    walk.explore_p = want
    walk.exploring = want > 0 and walk.rt.rng.random() < want
    i = 0
    while i < len(walk.rt.levels) - 1:
        if not _learning_sample(walk, i):
            i += 1
            continue
        await try_level(walk, i)
        if walk.answer is not None:
            return
        i += 2 if walk.skip_next else 1  # a router sent the request past the next level
        walk.skip_next = False


def _learning_sample(walk: Walk, i: int) -> bool:
    """Whether level ``i`` runs. A level whose policy cannot answer yet (its operating point
    has not shown the target) runs only on a ``learn_share`` sample of its traffic, so a fresh
    task does not pay for a small LM whose answers are all deferred; the items it runs on are
    a uniform sample, so they explore it (its agreement estimate learns from every one). Only
    that level: the levels after it keep the request's own coin, so a fresh cheap level that
    cannot answer yet does not stop the ones after it from answering."""
    pol = walk.rt.policies[i]
    if pol is None or not pol.cannot_answer:
        return True
    name = walk.rt.levels[i].name
    if walk.rt.rng.random() >= pol.run_share:
        walk.deltas[level_key(name, LevelStat.SKIPPED)] = 1
        return False
    walk.sampled.add(name)
    return True


async def try_level(walk: Walk, i: int) -> None:
    _arm_abort(walk, i)
    remaining = walk.query.deadline - time.monotonic() if walk.query.deadline else None
    try:
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        out = await asyncio.wait_for(walk.rt.levels[i].predict(walk.query), timeout=remaining)
    except (BackendError, TimeoutError) as e:
        level_failed(walk, i, e)
        return
    record_level(walk, i, out)


def _arm_abort(walk: Walk, i: int) -> None:
    """Let level ``i`` stop generating once its answer is sure to be deferred: only where
    its policy can answer at all, not on an exploring request (it must finish, to be learned
    from) and not on the abort head's own exploration share."""
    walk.query.shared.pop("abort", None)
    pol = walk.rt.policies[i]
    ab = None if pol is None else pol.abort
    if ab is None or pol is None or pol.cannot_answer or walk.explores(walk.rt.levels[i].name):
        return
    if walk.rt.rng.random() >= ab.explore:
        walk.query.shared["abort"] = ab


def level_failed(walk: Walk, i: int, e: Exception) -> None:
    level = walk.rt.levels[i]
    msg = "deadline exceeded" if isinstance(e, TimeoutError) else str(e)
    log.warning("level %s of %s failed: %s", level.name, walk.rt.name, msg)
    walk.cost += level.cost
    key = partial(level_key, level.name)
    walk.deltas[key(LevelStat.SEEN)] = 1
    walk.deltas[key(LevelStat.FAILED)] = 1
    walk.traces.append(LevelTrace(level.name, False, None, 0.0, error=msg))
    if i == len(walk.rt.levels) - 1:
        walk.large_failed = msg
        walk.deltas[TaskStat.LLM_CALLS] = 1
        if isinstance(e, ContextLengthError):
            walk.too_long = msg


def record_level(walk: Walk, i: int, out: LevelOutput) -> None:
    """Book a level's answer and let its policy decide (the last level always answers)."""
    level = walk.rt.levels[i]
    key = partial(level_key, level.name)
    last = i == len(walk.rt.levels) - 1
    walk.cost += level.cost
    walk.outputs.append(out)
    walk.query.shared.setdefault("outputs", {})[level.name] = out  # later levels may stack on it
    walk.deltas[key(LevelStat.SEEN)] = 1
    walk.deltas[key(LevelStat.LATENCY_MS)] = out.latency_ms
    trace = LevelTrace(
        level.name,
        False,
        out.confidence if out.ready else None,
        out.latency_ms,
        valid=out.valid,
        ready=out.ready,
    )
    walk.traces.append(trace)
    if not out.valid:
        walk.deltas[key(LevelStat.INVALID)] = 1
    if last:
        walk.deltas[TaskStat.LLM_CALLS] = 1
        if out.valid:
            walk.answer, trace.answered = out, True
            walk.deltas[key(LevelStat.ANSWERED)] = 1
        else:
            walk.large_failed = "the large LM answered outside the label set"
        return
    policy = walk.rt.policies[i]
    assert policy is not None
    if getattr(level, "routes", False):
        _route(walk, level.name, out, policy)
        return
    if out.ready and out.valid:
        d = policy.decide(features_of(out, walk.outputs[:-1]))
        walk.decisions[level.name] = d
        walk.deltas[key(LevelStat.DECIDED)] = (
            1  # shared: every gateway's exploration decays with it
        )
        if policy.explorer is not None:
            policy.explorer.decided()
        if not d.defer and not walk.explores(level.name):
            walk.answer, trace.answered = out, True
            walk.deltas[key(LevelStat.ANSWERED)] = 1
            return
        if not d.defer:  # it would have answered: this item explores it
            trace.explored = True
            walk.deltas[key(LevelStat.EXPLORED)] = 1
    trace.deferred = True
    walk.deltas[key(LevelStat.DEFERRED)] = 1
    if out.extra.get("aborted"):
        walk.deltas[key(LevelStat.ABORTED)] = 1
    walk.explored_at[level.name] = walk.explores(level.name)


def _route(walk: Walk, name: str, out: LevelOutput, policy: Policy) -> None:
    """A pre-router never answers: its policy's "defer" sends the request past the next
    level (straight on); exploring means running the next level anyway, to keep learning."""
    key = partial(level_key, name)
    walk.deltas[key(LevelStat.DEFERRED)] = 1
    if not out.ready:
        return
    d = policy.decide(features_of(out, []))
    walk.decisions[name] = d
    if d.defer and not walk.exploring:
        walk.skip_next = True
        walk.deltas[key(LevelStat.ROUTED)] = 1
        walk.traces[-1].deferred = True


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
        key = partial(level_key, o.name)
        agree = float(o.label == large_label)
        deltas[key(LevelStat.AGREE_N)] = 1
        deltas[key(LevelStat.AGREE)] = agree
        if genuine and explored_at.get(o.name) and not d.defer:
            deltas[key(LevelStat.EST_N)] = 1
            deltas[key(LevelStat.EST_AGREE)] = agree
        genuine = genuine and d.defer
