"""Level 1: logistic regression over hashed n-grams, learned online with ``partial_fit``.

``HashingVectorizer`` is stateless, so the level can learn from the first demonstration on and
never peeks at the stream (the reference code fits TF-IDF on the whole stream up front).
Prediction is computed from the coefficients directly: the same numbers as ``predict_proba``
without its per-call validation, since this level sits on the hot path.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.utils import murmurhash3_32

from cascade.config import LevelConfig, TaskConfig
from cascade.level_settings import LogisticSettings
from cascade.levels.base import Demo, Level, LevelOutput, Query


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
        self.clf: SGDClassifier | None = None
        self._coef: np.ndarray | None = None  # (n_labels or 1, n_features), task label order
        self._intercept: np.ndarray | None = None
        self._buffer: list[tuple[str, str]] = []
        self.updates = 0
        self._t = 1.0

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

    def proba(self, x: sparse.csr_matrix) -> np.ndarray | None:
        """Class probabilities in task label order, or None before the first update."""
        coef, intercept = self._coef, self._intercept
        if coef is None or intercept is None:
            return None
        d = np.asarray(x @ coef.T).ravel() + intercept
        if len(self.labels) == 2:
            p1 = 1.0 / (1.0 + np.exp(-d[0]))
            return np.array([1.0 - p1, p1])
        p = 1.0 / (1.0 + np.exp(-d))
        return p / p.sum()

    def proba_text(self, text: str) -> np.ndarray | None:
        coef, intercept = self._coef, self._intercept
        if coef is None or intercept is None:
            return None
        idx, val = self.hashed(text)
        d = coef[:, idx] @ val + intercept
        if len(self.labels) == 2:
            p1 = 1.0 / (1.0 + np.exp(-d[0]))
            return np.array([1.0 - p1, p1])
        p = 1.0 / (1.0 + np.exp(-d))
        return p / p.sum()

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
        changed = False
        while len(self._buffer) >= self.batch_size:
            batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
            self._partial_fit(batch)
            changed = True
        return changed

    def _partial_fit(self, batch: list[tuple[str, str]]) -> None:
        if self.clf is None:
            self.clf = self._resume()
        x = self.features([t for t, _ in batch])
        y = np.array([lab for _, lab in batch])
        self.clf.partial_fit(x, y, classes=np.array(self.labels))
        self.updates += 1
        self._export()

    def _export(self) -> None:
        """Reorder sklearn's (sorted) classes into task label order for ``proba``."""
        assert self.clf is not None
        classes = list(self.clf.classes_)
        coef = self.clf.coef_.astype(np.float32)
        intercept = self.clf.intercept_.astype(np.float32)
        if len(self.labels) == 2:
            # sklearn's single row scores classes_[1]; we score self.labels[1]
            if classes[1] != self.labels[1]:
                coef, intercept = -coef, -intercept
        else:
            order = [classes.index(lab) for lab in self.labels]
            coef, intercept = coef[order], intercept[order]
        self._coef, self._intercept = coef, intercept

    def state(self) -> dict[str, np.ndarray]:
        if self._coef is None or self._intercept is None:
            return {}
        out = {
            "coef": self._coef,
            "intercept": self._intercept,
            "updates": np.array([self.updates], dtype=np.int64),
        }
        if self.clf is not None:
            out["t"] = np.array([self.clf.t_], dtype=np.float64)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "coef" not in arrays:
            return
        self._coef = arrays["coef"].astype(np.float32)
        self._intercept = arrays["intercept"].astype(np.float32)
        self.updates = int(arrays.get("updates", np.array([0]))[0])
        self._t = float(arrays["t"][0]) if "t" in arrays else 1.0
        self.clf = None  # rebuilt from these coefficients if this process learns

    def _resume(self) -> SGDClassifier:
        """An SGDClassifier that continues the SGD trajectory of the loaded coefficients."""
        clf = SGDClassifier(loss="log_loss", alpha=self.alpha, random_state=0)
        if self._coef is None or self._intercept is None:
            return clf
        clf.partial_fit(self.features([""]), [self.labels[0]], classes=np.array(self.labels))
        classes = list(clf.classes_)
        if len(self.labels) == 2:
            sign = 1.0 if classes[1] == self.labels[1] else -1.0
            clf.coef_ = (sign * self._coef).astype(np.float64)
            clf.intercept_ = (sign * self._intercept).astype(np.float64)
        else:
            order = [self.labels.index(c) for c in classes]
            clf.coef_ = self._coef[order].astype(np.float64)
            clf.intercept_ = self._intercept[order].astype(np.float64)
        clf.t_ = self._t
        return clf
