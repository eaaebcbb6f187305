"""Nearest large-LM demonstrations by sentence embedding, for in-context imitation.

A small LM shown the k most similar inputs the large LM has labelled, with its labels, as
few-shot turns, answers far more like the large LM than zero-shot (docs/BENCHMARKS.md, the
in-context imitation sections, has the figures). No gradient step is involved: the index *is*
the learned state, published in versions like any head.
"""

from __future__ import annotations

import numpy as np

from cascade.config import PromptConfig
from cascade.prompts import Message, render_messages


def few_shot_messages(
    prompt: PromptConfig, messages: list[Message], shots: list[tuple[str, str]]
) -> list[Message]:
    """``messages`` with each (input, label) of ``shots`` as an earlier user/assistant turn,
    after the system prompt and in the order given (the closest last, next to the query)."""
    turns: list[Message] = []
    for text, label in shots:
        turns += [m for m in render_messages(prompt, text) if m["role"] != "system"]
        turns.append({"role": "assistant", "content": label})
    system = [m for m in messages if m["role"] == "system"]
    return system + turns + [m for m in messages if m["role"] != "system"]


class DemoIndex:
    """The newest ``capacity`` demonstrations: unit embeddings, (shortened) texts, labels."""

    def __init__(self, capacity: int = 2000, words: int = 60) -> None:
        self.capacity = capacity
        self.words = words  # a long review in every few-shot turn makes the prompt slow
        self.vecs: np.ndarray | None = None  # (n, d) float32, unit rows
        self.texts: list[str] = []
        self.labels: list[int] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, embeddings: np.ndarray, texts: list[str], labels: list[int]) -> None:
        """Append a batch (oldest first); the oldest beyond ``capacity`` are forgotten."""
        if not texts:
            return
        v = np.asarray(embeddings, dtype=np.float32).reshape(len(texts), -1)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.vecs = v if self.vecs is None else np.concatenate([self.vecs, v])
        self.vecs = self.vecs[-self.capacity :]
        self.texts = [*self.texts, *(" ".join(t.split()[: self.words]) for t in texts)]
        self.texts = self.texts[-self.capacity :]
        self.labels = [*self.labels, *map(int, labels)][-self.capacity :]

    def nearest(self, embedding: np.ndarray, k: int) -> list[tuple[str, int]]:
        """The ``k`` most similar, least similar first (the closest sits next to the query)."""
        if self.vecs is None or k <= 0:
            return []
        q = np.asarray(embedding, dtype=np.float32)
        sims = self.vecs @ (q / max(float(np.linalg.norm(q)), 1e-12))
        top = np.argsort(-sims, kind="stable")[:k][::-1]
        return [(self.texts[i], self.labels[i]) for i in top]

    def state(self) -> dict[str, np.ndarray]:
        if self.vecs is None:
            return {}
        raw = [t.encode("utf-8") for t in self.texts]
        return {
            "icl_vecs": self.vecs.astype(np.float16),
            "icl_labels": np.array(self.labels, dtype=np.int64),
            "icl_text": np.frombuffer(b"".join(raw), dtype=np.uint8).copy(),
            "icl_text_len": np.array([len(b) for b in raw], dtype=np.int64),
        }

    def load_state(self, a: dict[str, np.ndarray]) -> None:
        if "icl_vecs" not in a:
            return
        blob = a["icl_text"].tobytes()
        ends = np.cumsum(a["icl_text_len"])
        starts = ends - a["icl_text_len"]
        self.vecs = a["icl_vecs"].astype(np.float32)
        self.texts = [blob[s:e].decode("utf-8") for s, e in zip(starts, ends, strict=True)]
        self.labels = [int(x) for x in a["icl_labels"]]
