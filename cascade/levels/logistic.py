"""Level 1: logistic regression over hashed n-grams, learned online with ``partial_fit``.

``HashingVectorizer`` is stateless, so the level can learn from the first demonstration on and
never peeks at the stream (the reference code fits TF-IDF on the whole stream up front).
Prediction goes through the shared ``LinearHead`` from the hashed row's non-zero entries: the
same numbers as ``predict_proba`` without building a matrix, since this level sits on the hot
path.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32

from cascade.config import LevelConfig, TaskConfig
from cascade.level_settings import LogisticSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query
from policies.linear import LinearHead


class LogisticLevel(Level):
    kind = "logistic"
    trainable = True

    def __init__(self, cfg: LevelConfig, task: TaskConfig) -> None:
        super().__init__(cfg, task)
        p = cfg.settings(LogisticSettings)
        self.n_features = p.n_features
        self.batch_size = p.batch_size
        self.alpha = p.alpha
        self.vectorizer = HashingVectorizer(
            n_features=self.n_features,
            ngram_range=(1, p.ngram_max),
            alternate_sign=False,
            norm="l2",
        )
        self._analyze = self.vectorizer.build_analyzer()
        self.head = LinearHead(self.labels, alpha=self.alpha)  # one-vs-rest, label order
        self._buffer: list[tuple[str, str]] = []
        self.updates = 0

    # ------------------------------------------------------------------ serving

    def features(self, texts: list[str]) -> sparse.csr_matrix:
        return self.vectorizer.transform(texts)

    def hashed(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's hashed features as (indices, l2-normalised values): the same numbers as
        ``HashingVectorizer.transform`` (tested), without its per-call validation."""
        counts: dict[int, float] = {}
        n = self.n_features
        for tok in self._analyze(text):
            h = murmurhash3_32(tok, seed=0)
            i = (2147483647 - (n - 1)) % n if h == -2147483648 else abs(h) % n
            counts[i] = counts.get(i, 0.0) + 1.0
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        val = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        return idx, val / np.sqrt((val * val).sum())

    def proba_text(self, text: str) -> np.ndarray | None:
        """Class probabilities in task label order, or None before the first update."""
        return self.head.predict_proba_row(*self.hashed(text)) if self.head.fitted else None

    async def predict(self, q: Query) -> LevelOutput:
        t0 = time.perf_counter()
        probs = self.proba_text(q.text)
        ms = (time.perf_counter() - t0) * 1000
        if probs is None:
            return self.not_ready(ms)
        return self.classify_output(probs, ms)

    # ------------------------------------------------------------------ learning

    def learn(self, demos: list[Demo]) -> bool:
        self._buffer.extend((d.text, d.label) for d in demos if d.label in self.labels)
        # every whole mini-batch waiting, in one SGD pass: one call per learner step, not one
        # per mini-batch (each call costs ~10 ms over the hashed width, whatever its rows)
        whole = len(self._buffer) // self.batch_size * self.batch_size
        if not whole:
            return False
        batch, self._buffer = self._buffer[:whole], self._buffer[whole:]
        self._partial_fit(batch)
        return True

    def _partial_fit(self, batch: list[tuple[str, str]]) -> None:
        x = self.features([t for t, _ in batch])
        self.head.partial_fit(x, np.array([lab for _, lab in batch]))
        self.updates += len(batch) // self.batch_size

    def state(self) -> dict[str, np.ndarray]:
        if not self.head.fitted:
            return {}
        out = {**self.head.state(), "updates": np.array([self.updates], dtype=np.int64)}
        if self.head.t_ is not None:  # a learner resuming from it continues the SGD schedule
            out["t"] = np.array([self.head.t_], dtype=np.float64)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "coef" not in arrays:
            return
        self.head.load_state(arrays)
        self.updates = int(arrays.get("updates", np.array([0]))[0])
        self.head.resume_t = float(arrays["t"][0]) if "t" in arrays else 1.0
