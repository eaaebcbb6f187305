"""A logistic-regression head over frozen features, refitted on all demonstrations so far.

The paper retrains BERT on the last 16 demonstrations. Over frozen features (a sentence
embedding, an LM's final hidden state) a regularised logistic regression refitted with L-BFGS
on *every* demonstration seen (bounded memory) is cheap here (well under a second for
thousands of examples), forgets nothing and is far better calibrated than a few SGD steps,
which is what the deferral policies need: an honest confidence.
"""

from __future__ import annotations

import numpy as np

from policies.linear import LinearHead

MEMORY = 20_000  # demonstrations remembered for the refit


class LogisticHead(LinearHead):
    """A softmax ``LinearHead`` over the task's labels (indices), warm-started at each refit;
    ``partial_fit`` remembers and refits once ``refit_every`` new examples arrived."""

    def __init__(
        self, n_classes: int, c: float = 0.01, refit_every: int = 16, min_examples: int = 32
    ) -> None:
        super().__init__(range(n_classes), "multinomial", c=c, warm_start=True)
        self.refit_every, self.min_examples = refit_every, min_examples
        self.x_mem: np.ndarray | None = None
        self.y_mem = np.zeros(0, dtype=np.int64)
        self.seen = 0
        self._since_fit = 0

    @property
    def trained(self) -> bool:
        return self.fitted

    proba = LinearHead.predict_proba  # the levels' name for it

    def remember(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.atleast_2d(x).astype(np.float32)
        self.x_mem = x if self.x_mem is None else np.concatenate([self.x_mem, x])[-MEMORY:]
        self.y_mem = np.concatenate([self.y_mem, np.asarray(y, dtype=np.int64)])[-MEMORY:]
        self.seen += len(x)
        self._since_fit += len(x)

    def add(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Remember examples; refit when enough new ones arrived. Returns whether it refitted."""
        self.remember(x, y)
        if self.seen < self.min_examples or self._since_fit < self.refit_every:
            return False
        return self.refit()

    def partial_fit(
        self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LogisticHead:
        if sample_weight is not None:
            raise ValueError("the refitted head weighs every example alike")
        self.add(x, y)
        return self

    def refit(self) -> bool:
        if self.x_mem is None or not self.fit(self.x_mem, self.y_mem):
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
