"""A generative stream recorded once: the small LM's answer with its whole uncertainty trace,
and the large LM's answer.

The small LM is frozen and decodes greedily, so one full generation per prompt holds every
prefix an early abort could have stopped at: the token log-probabilities and entropies, the
time each token came out, the final hidden state at the last prompt token and its mean over
the generated tokens. It is kept in ``bench/cache/gen.<model>.jsonl`` (recomputed on a miss,
with progress). The large LM's answers are replayed from ``bench/annotations/`` (recorded on a
miss through the real OpenAI-compatible server, as the gateway calls it) and committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from bench.harness import CACHE, BenchContext, Progress, quiet_llama
from bench.memo import _b64, _JsonlMemo, _unb64, memo_key
from bench.streams import Item
from cascade.backends.llama import LlamaBackend
from cascade.config import TaskConfig
from cascade.levels import Query, build_level
from cascade.prompts import Message, render_messages
from cascade.quality import QualityMeasure


@dataclass
class Trace:
    """One prompt of the stream, everything a simulated cascade needs to replay it."""

    set: str
    text: str
    prompt_tokens: int
    small: str
    lps: np.ndarray  # log-probability of each generated token
    ents: np.ndarray  # entropy of each step's top-k distribution
    token_ms: np.ndarray  # ms from the call's start to each token (prefill included)
    total_ms: float
    finish: str
    h_prompt: np.ndarray  # final hidden state at the last prompt token
    h_gen: np.ndarray  # its mean over the generated tokens (zeros when none)
    large: str = ""
    large_tokens: int = 0
    emb: np.ndarray | None = None  # MiniLM embedding of the prompt
    quality: float = 0.0  # the task's quality of the small answer against the large one


def messages_for(task: TaskConfig, text: str) -> list[Message]:
    return render_messages(task.prompt, text)


class SmallTraces:
    """The small LM's traces, memoised per prompt."""

    def __init__(self, backend: LlamaBackend, max_tokens: int) -> None:
        self.backend = backend
        self.max_tokens = max_tokens
        self.memo = _JsonlMemo(CACHE / f"gen.{backend.name}.jsonl")

    def key(self, messages: list[Message]) -> str:
        return memo_key(self.backend.name, "generate-trace", messages, [self.max_tokens])

    def get(self, messages: list[Message]) -> dict[str, Any]:
        k = self.key(messages)
        hit = self.memo.get(k)
        if hit is None:
            r = self.backend.generate(messages, self.max_tokens, hidden=True)
            zeros = np.zeros(self.backend.n_embd, dtype=np.float32)
            hit = {
                "text": r.text,
                "lp": [round(x, 5) for x in r.token_logprobs],
                "ent": [round(x, 5) for x in r.entropies or []],
                "t": [round(x, 2) for x in r.token_ms or []],
                "ms": round(r.latency_ms, 2),
                "finish": r.finish_reason,
                "hp": _b64(r.hidden if r.hidden is not None else zeros),
                "hg": _b64(r.hidden_gen if r.hidden_gen is not None else zeros),
            }
            self.memo.put(k, hit)
        return hit


async def record(
    ctx: BenchContext,
    task: TaskConfig,
    prompts: list[tuple[str, Item]],
    measure: QualityMeasure,
) -> list[Trace]:
    """Traces for every prompt: the small LM in a thread while the large LM answers."""
    small_cfg, large_cfg = task.levels[-2], task.levels[-1]
    with quiet_llama():
        large_level = build_level(large_cfg, task, ctx.pool)
        small_backend = ctx.pool.llama(small_cfg.backend or "")
    raw = getattr(small_backend, "backend", small_backend)
    traces = SmallTraces(raw, task.max_tokens)
    msgs = [messages_for(task, it.text) for _, it in prompts]

    small: list[dict[str, Any]] = []

    def run_small() -> None:
        prog = Progress("small LM traces", len(msgs), 25)
        for i, m in enumerate(msgs, start=1):
            small.append(traces.get(m))
            prog.update(i)

    large: list[tuple[str, int]] = []

    async def run_large() -> None:
        prog = Progress("large LM answers", len(msgs), 25)
        for i, ((_, it), m) in enumerate(zip(prompts, msgs, strict=True), start=1):
            out = await large_level.predict(Query("bench", it.text, m, task.max_tokens))
            # the Qwen2.5 models share one tokenizer: count the answer's tokens with the small's
            large.append((out.text, len(raw.tokenize(out.text))))
            prog.update(i)

    await asyncio.gather(anyio.to_thread.run_sync(run_small), run_large())
    embedder = measure.embedder
    assert embedder is not None, "the generate bench needs an embedding quality measure"
    embs = embedder.embed([it.text for _, it in prompts])
    quality = measure.scores([s["text"] for s in small], [t for t, _ in large])
    out = []
    for (name, it), m, s, (lt, ln), e, q in zip(
        prompts, msgs, small, large, embs, quality, strict=True
    ):
        out.append(
            Trace(
                set=name,
                text=it.text,
                prompt_tokens=len(raw.tokenize(raw.render(m))),
                small=s["text"],
                lps=np.asarray(s["lp"], dtype=np.float64),
                ents=np.asarray(s["ent"], dtype=np.float64),
                token_ms=np.asarray(s["t"], dtype=np.float64),
                total_ms=float(s["ms"]),
                finish=s["finish"] or "stop",
                h_prompt=_unb64(s["hp"]),
                h_gen=_unb64(s["hg"]),
                large=lt,
                large_tokens=ln,
                emb=np.asarray(e, dtype=np.float32),
                quality=float(q),
            )
        )
    return out


def memo_path(model: str) -> Path:
    return CACHE / f"gen.{model}.jsonl"
