"""The names of the shared counters: what a request adds to its task's figures.

The walk, the finish, the learner and the cache add to them; ``/admin/stats``, the exploration
sync and the metrics read them. Written as f-strings in each place, a typo read as zero; here
a misspelt name is an AttributeError. The strings are what the stores hold, so renaming one
here renames it everywhere at once.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStat(StrEnum):
    """Counters of a whole task."""

    REQUESTS = "requests"
    CACHE_HITS = "cache_hits"
    COST = "cost"  # relative cost units spent
    COST_LLM_ONLY = "cost_llm_only"  # what the large LM alone would have cost
    LLM_CALLS = "llm_calls"
    DEGRADED = "degraded"  # the large LM failed; a cheaper answer was served
    UNAVAILABLE = "unavailable"  # no answer at all (503)
    TRUNCATED = "truncated"  # the large LM's stream broke off after text was sent
    BAD_INPUT = "bad_input"  # refused as the request's fault (a prompt past the context)
    SHED = "shed"  # refused because too many requests waited for a model
    DEMOS = "demos"  # large-LM answers kept as demonstrations
    FUSED = "fused"
    FUSED_CHANGED = "fused_changed"
    FEEDBACK = "feedback"
    SEM_HITS = "semantic_hits"  # served a neighbour's cached answer
    SEM_SAVED = "semantic_cost_saved"  # the large LM's cost, per semantic hit
    SEM_VERIFIED = "semantic_verified"  # would-be hits run through the cascade to check
    SEM_VERIFIED_AGREE = "semantic_verified_agree"  # ... whose neighbour's answer agreed
    SEM_COMPARED = "semantic_compared"  # the gate's comparisons (misses and verifications)
    SEM_COMPARED_AGREE = "semantic_compared_agree"  # ... whose neighbour's answer agreed


class LevelStat(StrEnum):
    """Counters of one level of a task (stored as ``lvl:<level>:<stat>``)."""

    SEEN = "seen"
    ANSWERED = "answered"
    DEFERRED = "deferred"
    DECIDED = "decided"  # its policy decided (shared: exploration decays with it everywhere)
    EXPLORED = "explored"  # it would have answered; sent on to learn from
    ROUTED = "routed"  # a pre-router sent the request past the next level
    SKIPPED = "skipped"  # not run: its policy cannot answer yet, outside the learning sample
    ABORTED = "aborted"  # stopped mid-answer: its answer was going to be deferred
    INVALID = "invalid"  # answered outside the label set
    FAILED = "failed"
    LATENCY_MS = "latency_ms"
    AGREE_N = "agree_n"  # answers compared with the large LM's
    AGREE = "agree"
    EST_N = "est_n"  # unbiased sample: explored items it would have answered
    EST_AGREE = "est_agree"


def level_key(level: str, stat: LevelStat) -> str:
    return f"lvl:{level}:{stat.value}"
