"""LM levels: ``local_lm`` (GGUF in-process) and ``openai`` (any compatible endpoint).

Both turn a backend's ``LMResult`` into a ``LevelOutput``. For classify tasks the label
distribution comes from the log-probabilities of the label words as the next token; an answer
that names no label is *invalid* (counted, never learned from). For generated text the level's
confidence is the geometric-mean token probability (Chow-Average); the token log-probabilities
travel on to the policies.
"""

from __future__ import annotations

import math
import time

import anyio
import numpy as np

from cascade.backends.base import LMResult
from cascade.backends.llama import LlamaBackend
from cascade.backends.openai_http import OpenAIBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.levels.base import Level, LevelOutput, Query


def sequence_confidence(token_logprobs: list[float]) -> float:
    """exp(mean log p): a length-neutral confidence in [0, 1] for generated text."""
    if not token_logprobs:
        return 0.0
    return float(math.exp(sum(token_logprobs) / len(token_logprobs)))


class _LMLevel(Level):
    def to_output(self, r: LMResult, latency_ms: float) -> LevelOutput:
        if self.task.kind == "generate":
            return LevelOutput(
                name=self.name,
                text=r.text,
                confidence=sequence_confidence(r.token_logprobs) if r.has_logprobs else 0.0,
                latency_ms=latency_ms,
                lm=r,
                extra={"has_logprobs": float(r.has_logprobs)},
            )
        assert self.matcher is not None
        answered = self.matcher.match_text(r.text)
        if answered is None or r.label_probs is None:
            return LevelOutput(
                name=self.name, text=r.text, valid=False, latency_ms=latency_ms, lm=r
            )
        probs = np.array([r.label_probs.get(lab, 0.0) for lab in self.labels])
        out = self.classify_output(probs, latency_ms, lm=r)
        if r.label_mass is not None and not math.isnan(r.label_mass):
            out.extra["label_mass"] = float(r.label_mass)
        return out


class LocalLMLevel(_LMLevel):
    kind = "local_lm"

    def __init__(self, cfg: LevelConfig, task: TaskConfig, backend: LlamaBackend) -> None:
        super().__init__(cfg, task)
        self.backend = backend

    def warmup(self) -> None:
        messages = [{"role": "user", "content": "hello"}]
        if self.matcher is not None:
            self.backend.classify(messages, self.matcher)  # also scans the vocabulary once
        else:
            self.backend.generate(messages, max_tokens=1)

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        if self.task.kind == "classify":
            assert self.matcher is not None
            matcher = self.matcher
            r = await anyio.to_thread.run_sync(lambda: self.backend.classify(q.messages, matcher))
        else:
            r = await anyio.to_thread.run_sync(
                lambda: self.backend.generate(q.messages, q.max_tokens, q.temperature)
            )
        return self.to_output(r, (time.perf_counter() - t0) * 1000)


class OpenAILevel(_LMLevel):
    kind = "openai"

    def __init__(self, cfg: LevelConfig, task: TaskConfig, backend: OpenAIBackend) -> None:
        super().__init__(cfg, task)
        self.backend = backend

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        if self.task.kind == "classify":
            assert self.matcher is not None
            r = await self.backend.classify(q.messages, self.matcher, deadline=q.deadline)
        else:
            r = await self.backend.generate(
                q.messages, q.max_tokens, q.temperature, deadline=q.deadline
            )
        return self.to_output(r, (time.perf_counter() - t0) * 1000)
