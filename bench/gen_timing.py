"""What a call costs in wall time, measured live in the same run as the simulation uses it.

The small LM's time to its k-th token is its prefill (linear in the prompt's tokens) plus k
steps; the large LM's answer time is linear in its prompt and answer tokens. Both are fitted
by least squares on live calls made here, one at a time, right before the replay, so every
ratio compares two models measured on the same machine in the same minutes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.gen_data import Trace, messages_for
from bench.harness import BenchContext, Progress
from cascade.config import TaskConfig


@dataclass(frozen=True)
class Costs:
    small_prefill: tuple[float, float]  # ms = a + b * prompt tokens
    small_token_ms: float
    large: tuple[float, float, float]  # ms = a + b * prompt tokens + c * answer tokens
    embed_ms: float
    samples: int

    def small_ms(self, prompt_tokens: int, n_tokens: int) -> float:
        a, b = self.small_prefill
        return max(0.0, a + b * prompt_tokens) + self.small_token_ms * n_tokens

    def large_ms(self, prompt_tokens: int, n_tokens: int) -> float:
        a, b, c = self.large
        return max(1.0, a + b * prompt_tokens + c * n_tokens)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = np.column_stack([np.ones(len(x)), x])
    return np.linalg.lstsq(a, y, rcond=None)[0]


async def measure_costs(
    ctx: BenchContext, task: TaskConfig, traces: list[Trace], n: int = 24
) -> Costs:
    """Live calls on ``n`` prompts spread over the stream (memo and replay bypassed)."""
    from cascade.backends.openai_http import OpenAIBackend

    picks = [traces[i] for i in np.linspace(0, len(traces) - 1, n).astype(int)]
    llama = ctx.pool.llama(task.levels[-2].backend or "")
    raw = getattr(llama, "backend", llama)
    big = ctx.pool.openai(task.levels[-1].backend or "")
    assert isinstance(big, OpenAIBackend)
    prog = Progress("live timing", 2 * n, 8)
    pre, steps = [], []
    for i, tr in enumerate(picks, start=1):
        r = raw.generate(messages_for(task, tr.text), task.max_tokens, hidden=True)
        t = np.asarray(r.token_ms or [], dtype=np.float64)
        if t.size:
            pre.append((tr.prompt_tokens, t[0]))
        if t.size > 1:
            steps.append((t[-1] - t[0]) / (t.size - 1))
        prog.update(i)
    saved, big.cache = big.cache, None
    large = []
    try:
        for i, tr in enumerate(picks, start=n + 1):
            t0 = time.perf_counter()
            # as the cascade calls it: a final answer asks for no log-probs
            r = await big.generate(messages_for(task, tr.text), task.max_tokens, logprobs=False)
            ms = (time.perf_counter() - t0) * 1000
            large.append((tr.prompt_tokens, len(raw.tokenize(r.text)), ms))
            prog.update(i)
    finally:
        big.cache = saved
    p = np.array(pre)
    small_prefill = _lstsq(p[:, 0], p[:, 1])
    lg = np.array(large)
    large_fit = _lstsq(lg[:, :2], lg[:, 2])
    encoder = ctx.pool.encoder(task.quality.backend or "")
    raw_enc = getattr(encoder, "backend", encoder)
    t0 = time.perf_counter()
    for tr in picks:
        raw_enc.embed([tr.text])
    embed_ms = (time.perf_counter() - t0) * 1000 / len(picks)
    return Costs(
        small_prefill=(float(small_prefill[0]), float(small_prefill[1])),
        small_token_ms=float(np.median(steps)),
        large=(float(large_fit[0]), float(large_fit[1]), float(large_fit[2])),
        embed_ms=embed_ms,
        samples=n,
    )
