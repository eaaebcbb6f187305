"""The semantic cache's place in a request: look up before the levels, learn after the answer.

``semantic_lookup`` runs after an exact-cache miss and before any level: it embeds the request
and asks the task's ``SemanticCache`` for a neighbour and the gate's decision. A served hit
answers at once (``semantic_hit``). Otherwise the request walks the cascade as usual (a
verification sample goes straight to the large LM), and ``semantic_after`` learns from the
answer: when the large LM answered and a neighbour existed, whether the neighbour's answer
agreed is one comparison for the gate; the answer itself becomes an entry.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from cascade.backends import BackendPool
from cascade.config import TaskConfig
from cascade.counters import TaskStat
from cascade.levels import LevelOutput, Query
from cascade.outcome import Outcome, cache_hit
from cascade.prompts import Message
from cascade.quality import QualityMeasure
from cascade.semcache import COMPARISON_TTL_S, COMPARISONS, Lookup, SemanticCache, partition
from cascade.store.base import Store

if TYPE_CHECKING:
    from cascade.runtime import TaskRuntime

log = logging.getLogger(__name__)

#: A neighbour this close with the same answer is the same entry: not written again.
SAME = 0.9995


def build_semantic(name: str, task: TaskConfig, pool: BackendPool) -> SemanticCache | None:
    sc = task.semantic_cache
    if sc is None:
        return None
    quality = None
    if task.kind == "generate":
        q = task.quality
        embedder = pool.encoder(q.backend) if q.measure == "cosine" and q.backend else None
        quality = QualityMeasure(q.measure, q.threshold, embedder)
    cache = SemanticCache(name, sc, pool.encoder(sc.encoder), task.cache_ttl_s or 86_400)
    cache.quality = quality
    cache.n_labels = len(task.labels) if task.kind == "classify" and task.labels else None
    # the levels that read the prompt's embedding may reuse this one if it is theirs
    readers = [lv.backend for lv in task.levels if lv.kind == "encoder"]
    readers += [getattr(lv.params, "embed", None) for lv in task.levels if lv.kind != "encoder"]
    cache.shares_embedding = all(r in (None, sc.encoder) for r in readers)
    return cache


def _matched(text: str, messages: list[Message] | None) -> tuple[str, str]:
    """(what must be equal: a chat's turns before the last; what is embedded: the rest)."""
    if not messages:
        return "", text
    last = messages[-1]
    return json.dumps(messages[:-1], ensure_ascii=False, sort_keys=True), str(last["content"])


def partitions(
    rt: TaskRuntime, q: Query, tenant: str | None, context: str
) -> tuple[str, str, list[str]]:
    """(where a large-LM answer is written, where this tenant's corrections are written,
    the partitions searched)."""

    def part(scope: str) -> str:
        return partition(
            rt.name, rt.fingerprint, q.max_tokens, round(q.temperature, 4), scope, context
        )

    own = part("shared" if tenant is None else f"tenant:{tenant}")
    answers = part("shared") if rt.config.shared_cache else own
    return answers, own, list(dict.fromkeys([own, answers]))


async def semantic_lookup(
    rt: TaskRuntime, q: Query, tenant: str | None, messages: list[Message] | None
) -> Lookup | None:
    """The gate's decision on the request's nearest neighbour; None without a semantic cache
    or when embedding failed (the request then walks the cascade as if there were none)."""
    sem = rt.semantic
    if sem is None:
        return None
    t0 = time.perf_counter()
    context, text = _matched(q.text, messages)
    try:
        vec = await anyio.to_thread.run_sync(sem.embed, text)
    except Exception as e:  # an encoder failure must not fail the request
        log.warning("semantic cache of %s skipped: %s", rt.name, e)
        return None
    if sem.shares_embedding and not messages:
        q.shared.setdefault("embedding", vec)
    answers, own, parts = partitions(rt, q, tenant, context)
    look = sem.lookup(parts, vec, len(text))
    look.part, look.own, look.text = answers, own, text
    look.lookup_ms = (time.perf_counter() - t0) * 1000
    return look


async def semantic_hit(store: Store, rt: TaskRuntime, look: Lookup, t0: float) -> Outcome:
    """The neighbour's answer, served. The lookup goes to the gate (and the shared log) as a
    served hit with no verdict: the gate weighs what it serves by them."""
    assert look.neighbour is not None
    entry = look.neighbour.entry
    saved = {TaskStat.SEM_HITS: 1, TaskStat.SEM_SAVED: rt.large.cost}
    answer = (entry.output, entry.label, entry.level)
    out = cache_hit(store, rt, answer, t0, "semantic", look.neighbour.similarity, saved)
    sem = rt.semantic
    if sem is not None and look.features is not None and sem.gate.fixed is None:
        await log_comparison(store, sem, look.features, None)
    return out


def agrees(sem: SemanticCache, kind: str, look: Lookup, served: LevelOutput) -> bool:
    assert look.neighbour is not None
    entry = look.neighbour.entry
    if kind == "classify":
        return entry.label == served.label
    if sem.quality is None:
        return entry.output.strip() == served.text.strip()
    return sem.quality.acceptable(entry.output, served.text)


async def semantic_after(
    store: Store, rt: TaskRuntime, look: Lookup | None, served: LevelOutput, source: str
) -> dict[str, float]:
    """After the large LM answered (not degraded): one comparison for the gate, if the
    request had a neighbour, and the answer as a new entry. Returns the counters added."""
    sem = rt.semantic
    deltas: dict[str, float] = {}
    if sem is None or look is None:
        return deltas
    n = look.neighbour
    agreed = False
    if n is not None and look.features is not None and n.similarity >= sem.gate.floor:
        agreed = await anyio.to_thread.run_sync(agrees, sem, rt.config.kind, look, served)
        await log_comparison(store, sem, look.features, agreed)
        deltas = {TaskStat.SEM_COMPARED: 1.0, TaskStat.SEM_COMPARED_AGREE: float(agreed)}
        if look.decision.verify:
            deltas[TaskStat.SEM_VERIFIED] = 1
            deltas[TaskStat.SEM_VERIFIED_AGREE] = float(agreed)
        store.count(rt.name, deltas)
    if n is not None and n.similarity >= SAME and agreed and n.entry.part == look.part:
        return deltas
    record = served.confidence if rt.config.kind == "classify" else None
    fields = sem.entry_fields(look.part, look.vec, served.text, served.label, source, record)
    await keep_entry(store, sem, fields)
    return deltas


async def log_comparison(
    store: Store, sem: SemanticCache, features: Any, agreed: bool | None
) -> None:
    """Into the shared log (other gateways learn it at their next sync) and this gateway's
    gate at once; a comparison may refit the gate's model, in a worker thread."""
    row = sem.comparison(features, agreed)
    row_id = await store.sem_append(
        sem.task + COMPARISONS, row, COMPARISON_TTL_S, sem.cfg.comparisons
    )
    await anyio.to_thread.run_sync(sem.learn, row_id is not None, row)


async def keep_entry(store: Store, sem: SemanticCache, fields: dict[str, str]) -> None:
    """Append to the shared log and index at once (the log's copy is not indexed twice)."""
    entry_id = await store.sem_append(sem.task, fields, sem.ttl_s, sem.cfg.max_entries)
    sem.index(entry_id or f"local-{uuid.uuid4().hex}", fields)


async def correct_semantic(
    store: Store, sem: SemanticCache, record: dict[str, Any], output: str, label: str | None
) -> None:
    """A ``/feedback`` correction as an entry of the tenant's own partition (it replaces the
    answer at the same words there; the shared partition keeps the large LM's)."""
    part, text = record.get("part"), record.get("text")
    if not isinstance(part, str) or not isinstance(text, str):
        return
    try:
        vec = await anyio.to_thread.run_sync(sem.embed, text)
    except Exception as e:
        log.warning("semantic correction of %s skipped: %s", sem.task, e)
        return
    await keep_entry(store, sem, sem.entry_fields(part, vec, output, label, "feedback", 1.0))


def record_of(look: Lookup | None) -> dict[str, Any] | None:
    """What ``/feedback`` needs to put a correction in the tenant's own partition."""
    if look is None:
        return None
    return {"part": look.own, "text": look.text}


async def semantic_sync(store: Store, sem: SemanticCache, batch: int = 1000) -> int:
    """Index every entry other gateways (and this one) appended since the last sync, and learn
    from the comparisons they logged. Returns how many entries were read. Each cursor moves
    past a batch once it is taken, so a store that fails half-way costs no row twice."""
    read = 0
    async for rows in _batches(store, sem.task, sem.cursor, batch):
        for entry_id, fields in rows:
            sem.index(entry_id, fields)
        sem.cursor = rows[-1][0]
        read += len(rows)
    async for rows in _batches(store, sem.task + COMPARISONS, sem.cmp_cursor, batch):
        await anyio.to_thread.run_sync(sem.learn_shared, rows)
        sem.cmp_cursor = rows[-1][0]
    return read


async def _batches(
    store: Store, log_name: str, cursor: str | None, batch: int
) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
    """A shared log's rows after ``cursor``, a batch at a time, to its end."""
    while True:
        rows = await store.sem_read(log_name, cursor, batch)
        if not rows:
            return
        yield rows
        cursor = rows[-1][0]
        if len(rows) < batch:
            return
