"""Feedback: a correct answer for a request already served becomes a demonstration.

It outranks the large LM's answer for the same item: the learner applies it with a higher
weight (and after the LLM's, so it has the last word), and the request's cached outcome is
replaced so the same request is answered correctly from now on; with a semantic cache, the
correction is an entry of the tenant's own partition, which no other tenant searches.
"""

from __future__ import annotations

from cascade.counters import TaskStat
from cascade.demos import build_demo
from cascade.levels.base import LevelOutput
from cascade.runner import Cascade
from cascade.semantic import correct_semantic


class FeedbackError(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


async def submit_feedback(
    cascade: Cascade,
    request_id: str,
    label: str | None,
    output: str | None,
    tenant: str | None = None,
) -> str:
    """Validate the correction against the request's task and append it; return the task."""
    record = await cascade.store.get_record(f"req:{request_id}")
    if record is None:
        raise FeedbackError(
            f"no answered request {request_id!r} is on record (unknown, expired, "
            "answered from the cache, or the store was unreachable)",
            status=404,
        )
    if record.get("tenant") != tenant:
        raise FeedbackError(f"no answered request {request_id!r} is on record", status=404)
    rt = cascade.task(record["task"])
    if rt.config.kind == "classify":
        if label is None:
            raise FeedbackError(f"task {rt.name!r} is classify: give a label")
        if label not in rt.config.labels:
            raise FeedbackError(f"label {label!r} is not one of {rt.config.labels}")
        text = label
    else:
        if not output or not output.strip():
            raise FeedbackError(f"task {rt.name!r} is generate: give the correct output")
        text = output
    answer = LevelOutput(name="feedback", text=text, label=label)
    demo = build_demo(
        rt.name,
        request_id,
        record["input"],
        answer,
        record.get("levels", {}),
        int(record.get("version", 0)),
        None,
        source="feedback",
    )
    await cascade.store.append_demo(rt.name, demo)
    cascade.store.count(rt.name, {TaskStat.FEEDBACK: 1})
    # a task that shares its cache across keys keeps one tenant's correction out of what the
    # others are served: the shared entries hold the large LM's answers only, and the
    # correction goes to the tenant's own key, which its requests read first
    shared = rt.config.shared_cache and tenant is not None
    key = record.get("own_cache_key") if shared else record.get("cache_key")
    if key:
        await cascade.store.cache_set(
            key,
            {"output": text, "label": label, "level": "feedback"},
            rt.config.cache_ttl_s,
        )
    sem_record = record.get("semantic")
    if rt.semantic is not None and isinstance(sem_record, dict):
        await correct_semantic(cascade.store, rt.semantic, sem_record, text, label)
    return rt.name
