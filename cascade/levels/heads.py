"""A softmax-regression head over frozen features, trained online on a replay memory.

The paper retrains BERT on the last 16 demonstrations; over frozen embeddings a linear head is
cheap enough to take Adam steps over *all* demonstrations seen so far (bounded memory), which
forgets less and learns faster from few labels. Used over sentence embeddings (encoder level)
and over an LM's final hidden state (the small LM's probe).
"""

from __future__ import annotations

import numpy as np


class SoftmaxHead:
    def __init__(
        self,
        dim: int,
        n_classes: int,
        lr: float = 0.01,
        l2: float = 1e-4,
        steps: int = 10,
        batch: int = 64,
        memory: int = 20_000,
        seed: int = 0,
        standardize: bool = False,
    ) -> None:
        self.dim, self.k = dim, n_classes
        self.lr, self.l2, self.steps, self.batch, self.memory = lr, l2, steps, batch, memory
        self.standardize = standardize
        self.w = np.zeros((dim, n_classes), dtype=np.float32)
        self.b = np.zeros(n_classes, dtype=np.float32)
        self._m = [np.zeros_like(self.w), np.zeros_like(self.b)]
        self._v = [np.zeros_like(self.w), np.zeros_like(self.b)]
        self._t = 0
        self.mean = np.zeros(dim, dtype=np.float32)
        self.scale = np.ones(dim, dtype=np.float32)
        self.x_mem = np.zeros((0, dim), dtype=np.float32)
        self.y_mem = np.zeros(0, dtype=np.int64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def trained(self) -> bool:
        return self.seen > 0

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale if self.standardize else x

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(n, k) probabilities for (n, dim) features (or (k,) for one vector)."""
        one = x.ndim == 1
        z = self._norm(np.atleast_2d(x).astype(np.float32)) @ self.w + self.b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p[0] if one else p

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Remember examples; the memory keeps the most recent ``memory`` of them."""
        self.x_mem = np.concatenate([self.x_mem, np.atleast_2d(x).astype(np.float32)])[
            -self.memory :
        ]
        self.y_mem = np.concatenate([self.y_mem, np.asarray(y, dtype=np.int64)])[-self.memory :]
        self.seen += len(np.atleast_1d(y))
        if self.standardize:
            self.mean = self.x_mem.mean(axis=0)
            self.scale = self.x_mem.std(axis=0) + 1e-3

    def fit_steps(self, fresh: int = 0) -> None:
        """Adam steps on minibatches from memory; the ``fresh`` newest items are always in."""
        n = len(self.y_mem)
        if n == 0:
            return
        for _ in range(self.steps):
            size = min(self.batch, n)
            idx = self._rng.choice(n, size=size, replace=False)
            if fresh:
                idx = np.unique(np.concatenate([idx, np.arange(max(0, n - fresh), n)]))
            x, y = self._norm(self.x_mem[idx]), self.y_mem[idx]
            p = self.proba_raw(x)
            p[np.arange(len(y)), y] -= 1.0
            gw = x.T @ p / len(y) + self.l2 * self.w
            gb = p.mean(axis=0)
            self._adam([gw, gb])

    def proba_raw(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.w + self.b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def _adam(self, grads: list[np.ndarray], b1: float = 0.9, b2: float = 0.999) -> None:
        self._t += 1
        params = [self.w, self.b]
        for i, g in enumerate(grads):
            self._m[i] = b1 * self._m[i] + (1 - b1) * g
            self._v[i] = b2 * self._v[i] + (1 - b2) * g * g
            mh = self._m[i] / (1 - b1**self._t)
            vh = self._v[i] / (1 - b2**self._t)
            params[i] -= (self.lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)

    # ------------------------------------------------------------------ state

    def state(self, with_memory: bool = False) -> dict[str, np.ndarray]:
        out = {
            "w": self.w,
            "b": self.b,
            "mean": self.mean,
            "scale": self.scale,
            "seen": np.array([self.seen], dtype=np.int64),
        }
        if with_memory:
            out["x_mem"] = self.x_mem.astype(np.float16)
            out["y_mem"] = self.y_mem
        return out

    def load_state(self, a: dict[str, np.ndarray]) -> None:
        if "w" not in a:
            return
        self.w = a["w"].astype(np.float32)
        self.b = a["b"].astype(np.float32)
        self.mean = a.get("mean", self.mean).astype(np.float32)
        self.scale = a.get("scale", self.scale).astype(np.float32)
        self.seen = int(a.get("seen", np.array([0]))[0])
        if "x_mem" in a:
            self.x_mem = a["x_mem"].astype(np.float32)
            self.y_mem = a["y_mem"].astype(np.int64)
