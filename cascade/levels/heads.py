"""A logistic-regression head over frozen features, refitted on all demonstrations so far.

The paper retrains BERT on the last 16 demonstrations. Over frozen features (a sentence
embedding, an LM's final hidden state) a regularised logistic regression refitted with L-BFGS
on *every* demonstration seen (bounded memory) forgets nothing and is far better calibrated
than a few SGD steps, which is what the deferral policies need: an honest confidence.

What keeps it cheap as demonstrations pile up (bench learner): an L-BFGS step costs time in
proportion to the memory. While the memory is small (under ``refit_every / refit_growth``,
2,048) a refit comes every ``refit_every`` new examples and runs to convergence, as it always
did. Once it is large, a refit comes when the memory has grown by ``refit_growth`` of itself
and takes at most ``refit_steps`` L-BFGS steps from the last solution (the next one goes on
from there), so the work per demonstration stays flat however much is remembered; bench
learner checks the head against one refitted to convergence on the same memory. The memory
is a ring buffer (no copy of it per batch) whose column sums are kept as rows come and go
(no pass over it for the standardisation).
"""

from __future__ import annotations

import numpy as np

from policies.linear import LinearHead

MEMORY = 20_000  # demonstrations remembered for the refit
REFIT_GROWTH = 1 / 128  # past 16 x 128 = 2,048 remembered, refit once it grew by this share
REFIT_STEPS = 5  # L-BFGS steps per refit past that size


class LogisticHead(LinearHead):
    """A softmax ``LinearHead`` over the task's labels (indices), warm-started at each refit;
    ``partial_fit`` remembers and refits once enough new examples arrived."""

    def __init__(
        self,
        n_classes: int,
        c: float = 0.01,
        refit_every: int = 16,
        min_examples: int = 32,
        refit_growth: float = REFIT_GROWTH,
        refit_steps: int = REFIT_STEPS,
        memory: int = MEMORY,
    ) -> None:
        super().__init__(range(n_classes), "multinomial", c=c, warm_start=True)
        self.refit_every, self.min_examples = refit_every, min_examples
        self.refit_growth, self.refit_steps, self.memory = refit_growth, refit_steps, memory
        self._x: np.ndarray | None = None  # rows [0, _n) hold examples; grows to ``memory``
        self._y = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._oldest = 0  # once full, the row the next example replaces
        self._sum = np.zeros(0)  # float64 column sums and sums of squares of the rows held
        self._sq = np.zeros(0)
        self.seen = 0
        self._since_fit = 0

    @property
    def trained(self) -> bool:
        return self.fitted

    @property
    def x_mem(self) -> np.ndarray | None:
        """The remembered examples (in no particular order once the memory is full)."""
        return None if self._x is None else self._x[: self._n]

    def memory_nbytes(self) -> tuple[int, int]:
        """Bytes the example buffer takes now (it doubles up to ``memory`` rows), and will
        take at most."""
        if self._x is None:
            return 0, 0
        row = self._x.itemsize * self._x.shape[1] + self._y.itemsize
        return row * len(self._x), row * self.memory

    @property
    def y_mem(self) -> np.ndarray:
        return self._y[: self._n]

    proba = LinearHead.predict_proba  # the levels' name for it

    def remember(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.atleast_2d(x).astype(np.float32)
        y = np.asarray(y, dtype=np.int64)
        self.seen += len(x)
        self._since_fit += len(x)
        x, y = x[-self.memory :], y[-self.memory :]
        k = len(x)
        if k == 0:
            return
        if self._x is None:
            self._sum, self._sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        fresh = min(k, self.memory - self._n)  # appended rows; the rest replace the oldest
        self._reserve(self._n + fresh, x.shape[1])
        assert self._x is not None
        rows = np.arange(self._n, self._n + fresh)
        if k > fresh:
            old = (self._oldest + np.arange(k - fresh)) % self.memory
            gone = self._x[old].astype(np.float64)
            self._sum -= gone.sum(axis=0)
            self._sq -= (gone * gone).sum(axis=0)
            rows = np.concatenate([rows, old])
            self._oldest = int(old[-1] + 1) % self.memory
        self._x[rows], self._y[rows] = x, y
        wide = x.astype(np.float64)
        self._sum += wide.sum(axis=0)
        self._sq += (wide * wide).sum(axis=0)
        self._n += fresh
        if k > fresh and self._oldest < k - fresh:  # wrapped: recount, so no drift builds up
            held = self._x[: self._n].astype(np.float64)
            self._sum, self._sq = held.sum(axis=0), (held * held).sum(axis=0)

    def _reserve(self, rows: int, dim: int) -> None:
        """Room for ``rows`` examples, doubling (a task that sees few keeps a small buffer)."""
        have = 0 if self._x is None else len(self._x)
        if rows <= have:
            return
        size = min(self.memory, max(rows, 2 * have, 256))
        x, y = np.empty((size, dim), dtype=np.float32), np.empty(size, dtype=np.int64)
        if self._x is not None:
            x[: self._n], y[: self._n] = self._x[: self._n], self._y[: self._n]
        self._x, self._y = x, y

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Column means and standard deviations of the remembered examples."""
        mean = self._sum / self._n
        return mean, np.sqrt(np.maximum(self._sq / self._n - mean * mean, 0.0))

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Remember examples; refit when enough new ones arrived. Returns whether it refitted."""
        self.remember(x, y)
        if self.seen < self.min_examples or self._since_fit < self._interval:
            return False
        return self.refit()

    def partial_fit(
        self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LogisticHead:
        if sample_weight is not None:
            raise ValueError("the refitted head weighs every example alike")
        self.add(x, y)
        return self

    @property
    def _interval(self) -> float:
        """New examples between refits: ``refit_every``, or the growth share once larger."""
        return max(self.refit_every, self.refit_growth * self._n)

    @property
    def large(self) -> bool:
        """Past the size where refits come by growth and stop after ``refit_steps``."""
        return self._interval > self.refit_every

    def refit(self, converge: bool = False) -> bool:
        """Refit on the memory; bounded steps once it is large, unless ``converge``."""
        x = self.x_mem
        steps = self.refit_steps if self.large and self.fitted and not converge else None
        if x is None or not self.fit(x, self.y_mem, moments=self.moments(), max_iter=steps):
            return False
        self._since_fit = 0
        return True

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        return {**out, "seen": np.array([self.seen], dtype=np.int64)} if out else {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "coef" not in arrays:
            return
        super().load_state(arrays)
        self.seen = max(self.seen, int(arrays.get("seen", np.array([0]))[0]))
