"""Early abort: stop the small LM mid-answer once its answer is all but sure to be deferred.

After the prompt and then every ``every`` generated tokens, a logistic head over the prefix
(the small LM's hidden state at the last prompt token, the prompt's sentence embedding, and
the log-probabilities and entropies of the tokens so far) estimates the probability that the
level's own deferral rule will defer the finished answer. At ``confidence`` or above the
generation stops and the request goes to the large LM at once: the tokens not generated are
the saving, and the deferred request is answered sooner.

The head imitates the deferral rule, not the large LM, so its labels cost nothing: every
finished answer says what the rule decided. An abort only ever sends a request to the large
LM, so it cannot lower quality below what the rule holds; a wrong abort costs a large call
the rule would have saved. A share ``explore`` of requests is never aborted, so the head keeps
seeing finished answers of the kind it would abort.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from policies.linear import LinearHead

PREFIX_STATS = 8


def prefix_stats(lps: Sequence[float], ents: Sequence[float]) -> np.ndarray:
    """Summary of the tokens so far: count, mean, min, quantiles, entropy mean and max."""
    lp = np.asarray(lps, dtype=np.float64)
    en = np.asarray(ents, dtype=np.float64)
    if not lp.size:
        return np.zeros(PREFIX_STATS, dtype=np.float32)
    out = [
        np.log1p(lp.size),
        lp.mean(),
        lp.min(),
        np.quantile(lp, 0.1),
        np.quantile(lp, 0.5),
        lp.sum() / 10.0,
        en.mean() if en.size else 0.0,
        en.max() if en.size else 0.0,
    ]
    return np.asarray(out, dtype=np.float32)


class EarlyAbort:
    """The abort head of one level, learned online from the level's own final decisions."""

    def __init__(
        self,
        every: int = 8,
        confidence: float = 0.9,
        explore: float = 0.05,
        c: float = 0.05,
        min_examples: int = 200,
        refit_every: int = 64,
        memory: int = 12000,
    ) -> None:
        if every < 1:
            raise ValueError(f"early abort: every must be >= 1, got {every}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"early abort: confidence must be in [0.5, 1), got {confidence}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"early abort: explore must be in [0, 1], got {explore}")
        self.every, self.confidence, self.explore = every, confidence, explore
        self.min_examples, self.refit_every = min_examples, refit_every
        self.head = LinearHead(c=c, max_iter=300, warm_start=True)
        self.xs: deque[np.ndarray] = deque(maxlen=memory)
        self.ys: deque[int] = deque(maxlen=memory)
        self.ws: deque[float] = deque(maxlen=memory)
        self._since = 0
        self.finished = 0  # finished answers learned from

    @staticmethod
    def vector(
        hidden: np.ndarray | None,
        embedding: np.ndarray | None,
        lps: Sequence[float],
        ents: Sequence[float],
    ) -> np.ndarray:
        parts = [prefix_stats(lps, ents)]
        if embedding is not None:
            parts.append(np.asarray(embedding, dtype=np.float32))
        if hidden is not None:
            parts.append(np.asarray(hidden, dtype=np.float32))
        return np.concatenate(parts)

    def p_defer(self, x: np.ndarray) -> float:
        if not self.head.fitted:
            return 0.0
        return float(1.0 / (1.0 + np.exp(-self.head.decision_function(x[None])[0])))

    def should_abort(self, x: np.ndarray) -> bool:
        return self.p_defer(x) >= self.confidence

    def checkpoints(self, n_tokens: int) -> range:
        """The prefix lengths asked about for an answer of ``n_tokens`` (0 = the prompt)."""
        return range(0, n_tokens, self.every)

    def learn(
        self,
        hidden: np.ndarray | None,
        embedding: np.ndarray | None,
        lps: Sequence[float],
        ents: Sequence[float],
        deferred: bool,
        weight: float = 1.0,
    ) -> None:
        """One finished answer and the rule's verdict on it: a sample per checkpoint.
        ``weight``: how many answers of the traffic it stands for (a learner that only sees
        demonstrations sees an answered item only when it was explored: 1 / its chance)."""
        for c in self.checkpoints(len(lps)):
            self.xs.append(self.vector(hidden, embedding, lps[:c], ents[:c]))
            self.ys.append(int(deferred))
            self.ws.append(float(weight))
        self.finished += 1
        self._since += 1
        if self.finished >= self.min_examples and self._since >= self.refit_every:
            self._since = 0
            self.head.fit(np.stack(self.xs), np.array(self.ys), np.array(self.ws))

    def state(self) -> dict[str, np.ndarray]:
        return {f"abort_{k}": v for k, v in self.head.state().items()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.head.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("abort_")})
