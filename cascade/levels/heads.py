"""A logistic-regression head over frozen features, refitted on all demonstrations so far.

The paper retrains BERT on the last 16 demonstrations. Over frozen features (a sentence
embedding, an LM's final hidden state) a regularised logistic regression refitted with L-BFGS
on *every* demonstration seen (bounded memory) is cheap here (well under a second for
thousands of examples), forgets nothing and is far better calibrated than a few SGD steps,
which is what the deferral policies need: an honest confidence.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


class LogisticHead:
    def __init__(
        self,
        n_classes: int,
        c: float = 0.01,
        refit_every: int = 16,
        min_examples: int = 32,
        memory: int = 20_000,
        max_iter: int = 300,
    ) -> None:
        self.k = n_classes
        self.c, self.refit_every, self.min_examples = c, refit_every, min_examples
        self.memory, self.max_iter = memory, max_iter
        self.x_mem: np.ndarray | None = None
        self.y_mem = np.zeros(0, dtype=np.int64)
        self.seen = 0
        self._since_fit = 0
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None  # (k, dim) in label order
        self.intercept: np.ndarray | None = None
        self._clf: LogisticRegression | None = None

    @property
    def trained(self) -> bool:
        return self.coef is not None

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (k,) for one vector or (n, k) for a matrix."""
        assert self.coef is not None and self.intercept is not None
        assert self.mean is not None and self.scale is not None
        one = x.ndim == 1
        z = ((np.atleast_2d(x) - self.mean) / self.scale) @ self.coef.T + self.intercept
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p[0] if one else p

    def remember(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.atleast_2d(x).astype(np.float32)
        self.x_mem = x if self.x_mem is None else np.concatenate([self.x_mem, x])[-self.memory :]
        self.y_mem = np.concatenate([self.y_mem, np.asarray(y, dtype=np.int64)])[-self.memory :]
        self.seen += len(x)
        self._since_fit += len(x)

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Remember examples; refit when enough new ones arrived. Returns whether it refitted."""
        self.remember(x, y)
        if self.seen < self.min_examples or self._since_fit < self.refit_every:
            return False
        return self.refit()

    def refit(self) -> bool:
        if self.x_mem is None or len(np.unique(self.y_mem)) < 2:
            return False
        x, y = self.x_mem, self.y_mem
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-3
        xs = (x - mean) / scale
        if self._clf is None:
            self._clf = LogisticRegression(C=self.c, max_iter=self.max_iter, warm_start=True)
        clf = self._clf
        if getattr(clf, "classes_", None) is not None and len(clf.classes_) != len(np.unique(y)):
            clf = self._clf = LogisticRegression(C=self.c, max_iter=self.max_iter, warm_start=True)
        clf.fit(xs, y)
        present = list(clf.classes_)
        coef = np.zeros((self.k, x.shape[1]), dtype=np.float32)
        intercept = np.full(self.k, -30.0, dtype=np.float32)  # never-seen classes: ~0
        if len(present) == 2 and clf.coef_.shape[0] == 1:
            # binary: sigmoid(w.x + b) == softmax over (0, w.x + b)
            coef[present[1]] = clf.coef_[0]
            intercept[present[1]] = clf.intercept_[0]
            intercept[present[0]] = 0.0
        else:
            for row, cls in enumerate(present):
                coef[cls] = clf.coef_[row]
                intercept[cls] = clf.intercept_[row]
        self.mean, self.scale = mean.astype(np.float32), scale.astype(np.float32)
        self.coef, self.intercept = coef, intercept
        self._since_fit = 0
        return True

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        if self.coef is None or self.intercept is None:
            return {}
        assert self.mean is not None and self.scale is not None
        return {
            "coef": self.coef,
            "intercept": self.intercept,
            "mean": self.mean,
            "scale": self.scale,
            "seen": np.array([self.seen], dtype=np.int64),
        }

    def load_state(self, a: dict[str, np.ndarray]) -> None:
        if "coef" not in a:
            return
        self.coef = a["coef"].astype(np.float32)
        self.intercept = a["intercept"].astype(np.float32)
        self.mean = a["mean"].astype(np.float32)
        self.scale = a["scale"].astype(np.float32)
        self.seen = max(self.seen, int(a.get("seen", np.array([0]))[0]))
