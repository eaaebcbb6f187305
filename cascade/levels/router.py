"""The pre-router: before any LM runs, predict whether the next level's answer will be accepted.

Routing and cascading together: a logistic regression on prompt features (hashed n-grams,
plus a sentence embedding when ``params.embed`` names an encoder) estimates P(the next LM's
answer is acceptable). When its policy is confident it will not be (P below the threshold),
the request skips that LM and goes straight to the large LM, saving the small LM's cost. It
learns online from the same demonstrations: whether the next level's answer was acceptable.
"""

from __future__ import annotations

import time

import anyio
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

from cascade.backends.encoder import EncoderBackend
from cascade.config import LevelConfig, TaskConfig
from cascade.levels.base import Demo, Level, LevelOutput, Query


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
        p = cfg.params
        self.batch_size = int(p.get("batch_size", 8))
        self.alpha = float(p.get("alpha", 1e-4))
        self.vectorizer = HashingVectorizer(
            n_features=int(p.get("n_features", 2**16)),
            ngram_range=(1, 2),
            alternate_sign=False,
            norm="l2",
        )
        self.clf: SGDClassifier | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self._buffer: list[tuple[str, np.ndarray | None, int]] = []

    def _x(self, texts: list[str], embs: list[np.ndarray | None]) -> sparse.csr_matrix:
        x = self.vectorizer.transform(texts)
        if self.encoder is None:
            return x
        dense = np.stack(
            [e if e is not None else np.zeros(self.encoder.dim, np.float32) for e in embs]
        )
        return sparse.hstack([x, sparse.csr_matrix(dense)]).tocsr()

    def p_accept(self, x: sparse.csr_matrix) -> float | None:
        if self.coef is None:
            return None
        z = float((x @ self.coef)[0]) + self.intercept
        return float(1.0 / (1.0 + np.exp(-z)))

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

    def learn(self, demos: list[Demo]) -> bool:
        for d in demos:
            rec = d.levels.get(self.target) or {}
            if "acceptable" in rec:
                self._buffer.append((d.text, d.embedding, int(bool(rec["acceptable"]))))
        changed = False
        while len(self._buffer) >= self.batch_size:
            batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
            x = self._x([t for t, _, _ in batch], [e for _, e, _ in batch])
            y = np.array([a for _, _, a in batch])
            if self.clf is None:
                self.clf = SGDClassifier(loss="log_loss", alpha=self.alpha, random_state=0)
                if self.coef is not None:  # resume from published coefficients
                    self.clf.partial_fit(x[:1], y[:1], classes=np.array([0, 1]))
                    self.clf.coef_ = self.coef[None].astype(np.float64)
                    self.clf.intercept_ = np.array([self.intercept])
            self.clf.partial_fit(x, y, classes=np.array([0, 1]))
            self.coef = self.clf.coef_[0].astype(np.float32)
            self.intercept = float(self.clf.intercept_[0])
            self.updates += 1
            changed = True
        return changed

    def state(self) -> dict[str, np.ndarray]:
        if self.coef is None:
            return {}
        return {
            "coef": self.coef,
            "intercept": np.array([self.intercept]),
            "updates": np.array([self.updates], dtype=np.int64),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "coef" in arrays:
            self.coef = arrays["coef"].astype(np.float32)
            self.intercept = float(arrays["intercept"][0])
            self.updates = int(arrays.get("updates", np.array([0]))[0])
            self.clf = None  # a learner resuming here restarts SGD from these coefficients
