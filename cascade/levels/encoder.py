"""Level 2 for classify tasks: a sentence encoder with a classification head learned online.

The encoder (all-MiniLM-L6-v2) is frozen and shared; the head is a softmax regression trained
on demonstrations. The embedding is computed once per request and shared with later levels
(``Query.shared["embedding"]``) and carried in the demonstration, so the learner need not
re-encode.
"""

from __future__ import annotations

import time

import anyio
import numpy as np

from cascade.backends.encoder import EncoderBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.levels.base import Demo, Level, LevelOutput, Query
from cascade.levels.heads import SoftmaxHead


class EncoderLevel(Level):
    kind = "encoder"
    trainable = True

    def __init__(self, cfg: LevelConfig, task: TaskConfig, encoder: EncoderBackend) -> None:
        super().__init__(cfg, task)
        self.encoder = encoder
        p = cfg.params
        self.batch_size = int(p.get("batch_size", 8))
        self.head = SoftmaxHead(
            encoder.dim,
            len(self.labels),
            lr=float(p.get("lr", 0.05)),
            l2=float(p.get("l2", 1e-4)),
            steps=int(p.get("steps", 20)),
        )
        self._pending: list[tuple[np.ndarray, int]] = []
        self.updates = 0

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

    def learn(self, demos: list[Demo]) -> bool:
        todo = [d for d in demos if d.label in self.labels]
        missing = [d for d in todo if d.embedding is None]
        if missing:
            embs = self.encoder.embed([d.text for d in missing])
            for d, e in zip(missing, embs, strict=True):
                d.embedding = e
        for d in todo:
            assert d.embedding is not None and d.label is not None
            self._pending.append((d.embedding, self.labels.index(d.label)))
        if len(self._pending) < self.batch_size:
            return False
        x = np.stack([e for e, _ in self._pending])
        y = np.array([c for _, c in self._pending])
        self.head.add(x, y)
        self.head.fit_steps(fresh=len(y))
        self._pending = []
        self.updates += 1
        return True

    def state(self) -> dict[str, np.ndarray]:
        if not self.head.trained:
            return {}
        return {**self.head.state(), "updates": np.array([self.updates], dtype=np.int64)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.head.load_state(arrays)
        if "updates" in arrays:
            self.updates = int(arrays["updates"][0])
