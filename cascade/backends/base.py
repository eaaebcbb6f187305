"""What every LM backend returns: text plus the uncertainty signals deferral rules read."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

_model_nice = 0  # how far below the event loop a thread running a model is scheduled
_niced = threading.local()


def set_model_nice(nice: int) -> None:
    """Run in-process models at ``nice`` (0-19) below the thread that serves requests.

    A model is batch work beside the event loop's interactive work (a cache hit, a health
    check): on a busy machine the scheduler should run the loop first. Linux schedules threads
    one by one, so only the threads that run models are lowered, and only from now on."""
    global _model_nice
    _model_nice = max(0, min(19, nice))


def model_thread() -> None:
    """Lower the calling thread to the model priority, ``_model_nice`` below the process's
    main thread, once per thread (a no-op where the OS refuses or has no per-thread priority)."""
    if not _model_nice or getattr(_niced, "done", 0) >= _model_nice:
        return
    if threading.current_thread() is threading.main_thread():
        return  # the thread that serves requests (or a script's only thread) keeps its place
    _niced.done = _model_nice
    with contextlib.suppress(OSError, AttributeError):
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's, on Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, base + _model_nice))


class BackendError(RuntimeError):
    """A model backend failed to answer (unreachable, timed out, bad response)."""


class SilentStreamError(BackendError):
    """A streamed answer closed without sending anything. llama.cpp's server does this when
    the prompt does not fit its context (200, then nothing): asking again without streaming
    learns why, or gets the answer."""


class ContextLengthError(BackendError):
    """The prompt (with the tokens asked for) does not fit the model's context: the request's
    fault, which no retry or other replica mends."""


@dataclass
class LMResult:
    """One answer of a language model.

    ``token_logprobs`` are the log-probabilities of the generated tokens; ``entropies`` the
    entropy of each step's (top-k, renormalised) distribution where the backend can see it;
    ``label_probs`` the distribution over a classify task's labels, renormalised, with
    ``label_mass`` the probability the model put on the labels at all.
    """

    text: str
    model: str
    token_logprobs: list[float] = field(default_factory=list)
    tokens: list[str] | None = None  # the text of each generated token, where known
    entropies: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    label_probs: dict[str, float] | None = None
    label_mass: float | None = None
    hidden: np.ndarray | None = None  # final hidden state at the last prompt token
    hidden_gen: np.ndarray | None = None  # mean final hidden state over the generated tokens
    token_ms: list[float] | None = None  # ms from the call's start to each generated token
    finish_reason: str | None = None
    latency_ms: float = 0.0
    has_logprobs: bool = True

    def label(self) -> str | None:
        if not self.label_probs:
            return None
        return max(self.label_probs.items(), key=lambda kv: kv[1])[0]


def entropy_of_logprobs(logprobs: np.ndarray) -> float:
    """Entropy (nats) of a distribution given by (possibly truncated) log-probabilities."""
    lp = np.asarray(logprobs, dtype=np.float64)
    lp = lp - np.logaddexp.reduce(lp)
    return float(-(np.exp(lp) * lp).sum())


def label_distribution(
    pairs: list[tuple[str | None, float]], labels: list[str]
) -> tuple[dict[str, float], float]:
    """Sum token probabilities per label and renormalise; also return the mass on labels."""
    mass = dict.fromkeys(labels, 0.0)
    for lab, lp in pairs:
        if lab is not None:
            mass[lab] += math.exp(lp)
    total = sum(mass.values())
    if total <= 0.0:
        return {lab: 1.0 / len(labels) for lab in labels}, 0.0
    return {lab: v / total for lab, v in mass.items()}, total
