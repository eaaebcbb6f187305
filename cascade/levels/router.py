"""The pre-router: before any LM runs, predict whether the next level's answer will be accepted.

Routing and cascading together: a logistic regression on prompt features (hashed n-grams,
plus a sentence embedding when ``params.embed`` names an encoder) estimates P(the next level's
policy accepts its answer). When it is confident it will not (P below the threshold), the
request skips that LM and goes straight to the large LM, saving the small LM's cost on an
answer that would have been deferred anyway.

It learns online from the same demonstrations, which over-represent deferred items: every
deferral reaches the large LM, but an accepted answer only when the request explored. Each
sample is weighted by 1 / P(it became a demonstration) (the exploration coin's probability,
recorded with it), so the router learns the acceptance rate of all traffic, not of the
demonstrations. Without exploration the weights are unknown and it falls back to learning
whether the answer was acceptable to the task's quality measure.
"""

from __future__ import annotations

import time

import anyio
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer

from cascade.backends.encoder import EncoderBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.level_settings import RouterSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query
from policies.linear import LinearHead


class RouterLevel(Level):
    kind = "router"
    trainable = True
    routes = True  # its policy's "defer" means: skip the next level

    def __init__(
        self, cfg: LevelConfig, task: TaskConfig, target: str, encoder: EncoderBackend | None = None
    ) -> None:
        super().__init__(cfg, task)
        self.target = target  # the level whose acceptance it predicts
        self.encoder = encoder
        p = cfg.settings(RouterSettings)
        self.batch_size = p.batch_size
        self.alpha = p.alpha
        self.vectorizer = HashingVectorizer(
            n_features=p.n_features,
            ngram_range=(1, 2),
            alternate_sign=False,
            norm="l2",
        )
        self.head = LinearHead(alpha=self.alpha)  # P(accept): a binary event
        self._buffer: list[tuple[str, np.ndarray | None, int, float]] = []

    def _x(self, texts: list[str], embs: list[np.ndarray | None]) -> sparse.csr_matrix:
        x = self.vectorizer.transform(texts)
        if self.encoder is None:
            return x
        dense = np.stack(
            [e if e is not None else np.zeros(self.encoder.dim, np.float32) for e in embs]
        )
        return sparse.hstack([x, sparse.csr_matrix(dense)]).tocsr()

    def p_accept(self, x: sparse.csr_matrix) -> float | None:
        return float(self.head.predict_proba(x)[0, 1]) if self.head.fitted else None

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        emb = None
        if self.encoder is not None:
            emb = q.shared.get("embedding")
            if emb is None:
                emb = (await anyio.to_thread.run_sync(self.encoder.embed, [q.text]))[0]
                q.shared["embedding"] = emb
        p = self.p_accept(self._x([q.text], [emb]))
        ms = (time.perf_counter() - t0) * 1000
        if p is None:
            return LevelOutput(self.name, "", ready=False, latency_ms=ms)
        return LevelOutput(self.name, "", confidence=p, latency_ms=ms, extra={"p_accept": p})

    def _sample(self, d: Demo) -> tuple[int, float] | None:
        """(accepted, weight) for one demonstration, or None when it says nothing."""
        rec = d.levels.get(self.target) or {}
        dec = rec.get("decision")
        p = float((dec or {}).get("explore_p", 0.0))
        if dec is None or p <= 0.0:
            return (int(bool(rec["acceptable"])), 1.0) if "acceptable" in rec else None
        routed = bool(((d.levels.get(self.name) or {}).get("decision") or {}).get("defer"))
        accepted = not dec["defer"]
        # an accepted answer, or any answer past a routing skip, was seen only by exploring
        return int(accepted), (1.0 / max(p, 0.01)) if accepted or routed else 1.0

    def learn(self, demos: list[Demo]) -> bool:
        for d in demos:
            if (sample := self._sample(d)) is not None:
                self._buffer.append((d.text, d.embedding, *sample))
        changed = False
        while len(self._buffer) >= self.batch_size:
            batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
            x = self._x([b[0] for b in batch], [b[1] for b in batch])
            y = np.array([b[2] for b in batch])
            w = np.array([b[3] for b in batch])
            self.head.partial_fit(x, y, sample_weight=w)  # resumes from published coefficients
            self.updates += 1
            changed = True
        return changed

    def state(self) -> dict[str, np.ndarray]:
        if not self.head.fitted:
            return {}
        return {**self.head.state(), "updates": np.array([self.updates], dtype=np.int64)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "coef" in arrays:
            self.head.load_state(arrays)  # a learner resuming here restarts SGD from these
            self.updates = int(arrays.get("updates", np.array([0]))[0])
