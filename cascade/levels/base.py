"""One small interface for every level: predict with a confidence and features; learn.

A level answers a ``Query`` with a ``LevelOutput`` (its answer, a confidence and the features a
policy reads). Trainable levels also learn from demonstrations (in the learner process) and
exchange their learned parameters as plain numpy arrays (``state`` / ``load_state``), which
the learner publishes as versions and every gateway process hot-reloads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cascade.backends.base import LMResult
from cascade.config import LevelConfig, TaskConfig
from cascade.prompts import LabelMatcher, Message


@dataclass
class Query:
    """One request as the levels see it; ``shared`` carries work levels can reuse."""

    task: str
    text: str
    messages: list[Message]
    max_tokens: int
    temperature: float = 0.0
    deadline: float | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    # the client asked for token log-probabilities (the large LM skips them otherwise: on
    # llama.cpp's server they make generation several times slower)
    want_logprobs: bool = False


@dataclass
class LevelOutput:
    """A level's answer. ``ready`` is False when the level has nothing to say yet (untrained);
    ``valid`` is False when an LM answered outside a classify task's label set."""

    name: str
    text: str
    label: str | None = None
    probs: np.ndarray | None = None
    confidence: float = 0.0
    valid: bool = True
    ready: bool = True
    latency_ms: float = 0.0
    lm: LMResult | None = None
    extra: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None  # of the prompt, for policies that read it


@dataclass
class Demo:
    """A demonstration as the learner sees it: the input and the expert's answer."""

    id: str
    text: str
    label: str | None
    output: str
    levels: dict[str, dict[str, Any]]
    source: str = "llm"
    embedding: np.ndarray | None = None


class Level(ABC):
    """Base of all level kinds; subclasses set ``kind`` and implement ``predict``."""

    kind: ClassVar[str]
    trainable: bool = False
    updates: int = 0

    def __init__(self, cfg: LevelConfig, task: TaskConfig) -> None:
        self.cfg = cfg
        self.task = task
        self.name = cfg.name
        self.cost = cfg.cost
        self.labels = list(task.labels)
        self.matcher = LabelMatcher(task.labels, task.label_words) if task.labels else None

    @abstractmethod
    async def predict(self, q: Query) -> LevelOutput: ...

    async def stream(self, q: Query) -> AsyncIterator[tuple[str, LevelOutput | None]]:
        """Text deltas as they are generated, then ("", the output). Levels that cannot
        stream (and classify answers) yield only the output."""
        yield "", await self.predict(q)

    def warmup(self) -> None:  # noqa: B027 (optional hook)
        """Do the one-time work of the first request at start-up instead (blocking)."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release what the level holds (clients, threads)."""

    # ------------------------------------------------------------------ learning

    def learn(self, demos: list[Demo]) -> bool:
        """Update from demonstrations (learner side); return whether anything changed."""
        return False

    def remember(self, demos: list[Demo]) -> None:  # noqa: B027 (optional)
        """Rebuild training memory from already-applied demonstrations (learner restart)."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional)
        """Adopt parameters published by the learner (serving side)."""

    # ------------------------------------------------------------------ helpers

    def classify_output(self, probs: np.ndarray, latency_ms: float, **kw: Any) -> LevelOutput:
        # a saturated sigmoid says 1.0; no learned level is ever *certain*
        probs = np.clip(probs, 1e-6, 1.0 - 1e-6)
        probs = probs / probs.sum()
        i = int(np.argmax(probs))
        label = self.labels[i]
        if self.trainable:
            kw.setdefault("extra", {})["updates"] = float(self.updates)
        return LevelOutput(
            name=self.name,
            text=label,
            label=label,
            probs=probs,
            confidence=float(probs[i]),
            latency_ms=latency_ms,
            **kw,
        )

    def not_ready(self, latency_ms: float = 0.0) -> LevelOutput:
        k = len(self.labels)
        return LevelOutput(
            name=self.name,
            text="",
            probs=np.full(k, 1.0 / k) if k else None,
            confidence=0.0,
            ready=False,
            latency_ms=latency_ms,
        )
