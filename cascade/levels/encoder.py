"""Level 2 for classify tasks: a sentence encoder with a classification head learned online.

The encoder (all-MiniLM-L6-v2) is frozen and shared; the head is a logistic regression refitted
on the demonstrations. The embedding is computed once per request and shared with later levels
(``Query.shared["embedding"]``) and carried in the demonstration, so the learner need not
re-encode.
"""

from __future__ import annotations

import time

import anyio
import numpy as np

from cascade.backends.encoder import EncoderBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.level_settings import EncoderSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query
from cascade.levels.heads import LogisticHead


class EncoderLevel(Level):
    kind = "encoder"
    trainable = True

    def __init__(self, cfg: LevelConfig, task: TaskConfig, encoder: EncoderBackend) -> None:
        super().__init__(cfg, task)
        self.encoder = encoder
        p = cfg.settings(EncoderSettings)
        self.head = LogisticHead(
            len(self.labels), c=p.c, refit_every=p.refit_every, min_examples=p.min_examples
        )

    def warmup(self) -> None:
        self.encoder.embed(["warm up"])

    async def embedding(self, q: Query) -> np.ndarray:
        emb = q.shared.get("embedding")
        if emb is None:
            emb = (await anyio.to_thread.run_sync(self.encoder.embed, [q.text]))[0]
            q.shared["embedding"] = emb
        return emb

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        emb = await self.embedding(q)
        ms = (time.perf_counter() - t0) * 1000
        if not self.head.trained:
            return self.not_ready(ms)
        return self.classify_output(self.head.proba(emb), ms)

    def head_examples(self, demos: list[Demo]) -> tuple[np.ndarray, np.ndarray] | None:
        """The head's inputs and label indices for these demonstrations (None: none usable)."""
        todo = [d for d in demos if d.label in self.labels]
        if not todo:
            return None
        missing = [d for d in todo if d.embedding is None]
        if missing:  # the demonstration did not carry it: embed here
            embs = self.encoder.embed([d.text for d in missing])
            for d, e in zip(missing, embs, strict=True):
                d.embedding = e
        x = np.stack([d.embedding for d in todo if d.embedding is not None])
        y = np.array([self.labels.index(d.label) for d in todo if d.label is not None])
        return x, y

    def learn(self, demos: list[Demo]) -> bool:
        ex = self.head_examples(demos)
        if ex is None or not self.head.add(*ex):
            return False
        self.updates += 1
        return True

    def remember(self, demos: list[Demo]) -> None:
        ex = self.head_examples(demos)
        if ex is not None:
            self.head.remember(*ex)

    def state(self) -> dict[str, np.ndarray]:
        if not self.head.trained:
            return {}
        return {**self.head.state(), "updates": np.array([self.updates], dtype=np.int64)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.head.load_state(arrays)
        if "updates" in arrays:
            self.updates = int(arrays["updates"][0])
