"""Learned deferral rules for generated text (Gupta et al., ICLR 2024, Post-Hoc), online.

Each predicts whether the small LM's answer is acceptable (judged against the large LM's answer
by the task's quality measure) with an L2 logistic regression refitted on the demonstrations
so far: ``posthoc_quantile`` over the token log-probability quantiles, ``posthoc_embed``
adding a sentence embedding of the prompt, ``posthoc_hidden`` adding the small LM's own final
hidden state at the last prompt token and averaged over the generated tokens (Post-Hoc-Embed
as the paper means it: the model's decoder states, not only the prompt's wording).

The quality knob (``target_agreement``) reads its threshold off the explored samples' scores.
Scored by a head that was fitted on them, those look far safer than new items do: with a few
hundred demonstrations and hundreds of inputs, the head separates its own training items
almost perfectly. On 1,000 TREC prompts that made the knob at 0.9 answer items only ~66%
acceptable. So every explored sample is scored *out of fold*: the demonstrations are split
into ``folds`` by a hash of each one (stable across learner restarts), each fold has a head
fitted on the others, and a sample is scored by the head that never saw it. New items are
scored by the head fitted on everything.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from policies.abort import EarlyAbort
from policies.base import Features, PolicyError, register
from policies.features import ALPHAS, quantile_vector
from policies.generative import ScoreRule
from policies.linear import LinearHead


@register("posthoc_quantile")
class PosthocQuantile(ScoreRule):
    """P(unacceptable) from a logistic regression over the token features."""

    use_embedding = False
    use_hidden = False

    def __init__(
        self,
        c: float = 0.3,
        refit_every: int = 16,
        refit_growth: float = 0.1,
        min_examples: int = 32,
        folds: int = 5,
        memory: int = 20000,
        threshold: float | None = None,
        early_abort: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if threshold is None and kw.get("target_agreement") is None:
            threshold = 0.5
        super().__init__(threshold, **kw)
        if folds < 2:
            raise PolicyError(f"folds must be at least 2, got {folds}")
        if refit_growth < 0:
            raise PolicyError(f"refit_growth must be >= 0, got {refit_growth}")
        self.refit_every, self.min_examples = refit_every, min_examples
        self.abort = None if early_abort is None else EarlyAbort(**early_abort)
        self.refit_growth = float(refit_growth)
        # P(acceptable), refitted from the last solution (warm start: the data only grows)
        self.head = LinearHead(c=c, max_iter=300, warm_start=True)
        self.fold_heads = [LinearHead(c=c, max_iter=300, warm_start=True) for _ in range(folds)]
        self.memory = int(memory)  # the most recent demonstrations a refit learns from
        self.xs: list[np.ndarray] = []
        self.ys: list[int] = []
        self.folds: list[int] = []  # each remembered demonstration's fold
        self._since = 0
        self._fold = -1.0  # fold of the demonstration last remembered (-1: none)
        self.base_rate = 0.5  # P(acceptable) until both verdicts have been seen

    # ------------------------------------------------------------------ features and scores

    def vector(self, f: Features) -> np.ndarray:
        x = quantile_vector(f, ALPHAS)
        parts = [x]
        if self.use_embedding:
            if f.embedding is None:
                raise PolicyError(f"{self.kind} needs a prompt embedding (an encoder backend)")
            parts.append(np.asarray(f.embedding, dtype=np.float32))
        if self.use_hidden:
            if f.hidden is None:
                raise PolicyError(f"{self.kind} needs the small LM's hidden state (local_lm)")
            parts.append(np.asarray(f.hidden, dtype=np.float32))
        return np.concatenate(parts).astype(np.float32)

    def inputs(self, f: Features) -> np.ndarray:
        """The operating point's sample: the vector and the fold it was learned in."""
        return np.concatenate([self.vector(f), [self._fold]]).astype(np.float32)

    def _p_bad(self, head: LinearHead, x: np.ndarray) -> np.ndarray:
        # P(unacceptable) = expit(-z) directly: in float32, 1 - P(acceptable) is 0 from
        # z ~ 17 on, and the operating point orders the confident answers by it
        return 1.0 / (1.0 + np.exp(head.decision_function(x)))

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        """Scores of the operating point's samples, each by a head that did not learn it."""
        if not self.head.fitted:
            return np.full(len(x), 1.0 - self.base_rate)
        dim = len(self.head.mean_) if self.head.mean_ is not None else x.shape[1] - 1
        if x.shape[1] == dim:  # a window kept by a version from before the folds
            return self._p_bad(self.head, x)
        out = self._p_bad(self.head, x[:, :dim])
        fold = x[:, dim].astype(int)
        for k, head in enumerate(self.fold_heads):
            rows = fold == k
            if rows.any() and head.fitted:
                out[rows] = self._p_bad(head, x[rows, :dim])
        return out

    def score(self, features: Features) -> float:
        if features.token_logprobs is None or not features.token_logprobs.size:
            return math.inf
        if not self.head.fitted:
            return 1.0 - self.base_rate
        return float(self._p_bad(self.head, self.vector(features)[None])[0])

    # ------------------------------------------------------------------ learning

    def remember(self, features: Features, wrong: bool) -> None:
        if features.token_logprobs is not None and features.token_logprobs.size:
            x = self.vector(features)
            # the fold is a function of the demonstration itself, so a learner that rebuilds
            # its memory after a restart puts every item back in the fold it was scored by
            fold = zlib.crc32(x.tobytes()) % len(self.fold_heads)
            self._fold = float(fold)
            self.xs.append(x)
            self.ys.append(0 if wrong else 1)
            self.folds.append(fold)
            if len(self.ys) > self.memory:
                del self.xs[0], self.ys[0], self.folds[0]
            self._since += 1
        else:
            self._fold = -1.0

    def update(
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        self.remember(features, wrong)
        due = max(self.refit_every, self.refit_growth * len(self.ys))
        if len(self.ys) >= self.min_examples and self._since >= due:
            self.refit()
        super().update(features, wrong, explored, deferred)

    def refit(self) -> None:
        y = np.array(self.ys)
        x = np.stack(self.xs)
        self.base_rate, self._since = float(y.mean()), 0
        self.head.fit(x, y)
        if self.op is None:
            return  # a fixed threshold reads no window: no fold heads to fit
        fold = np.array(self.folds)
        for k, head in enumerate(self.fold_heads):
            keep = fold != k
            head.fit(x[keep], y[keep])
        if self.op.samples:
            self.op.refit(self.score_batch)

    # ------------------------------------------------------------------ versions

    def state(self) -> dict[str, np.ndarray]:
        out = {**super().state(), "base_rate": np.array([self.base_rate]), **self.head.state()}
        if self.abort is not None:
            out.update(self.abort.state())
        for k, head in enumerate(self.fold_heads):
            out.update({f"fold{k}_{name}": v for name, v in head.state().items()})
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "base_rate" in arrays:
            self.base_rate = float(arrays["base_rate"][0])
        self.head.load_state(arrays)
        if self.abort is not None:
            self.abort.load_state(arrays)
        for k, head in enumerate(self.fold_heads):
            prefix = f"fold{k}_"
            head.load_state(
                {n[len(prefix) :]: v for n, v in arrays.items() if n.startswith(prefix)}
            )
        super().load_state(arrays)  # last: the operating point rescores with these


@register("posthoc_embed")
class PosthocEmbed(PosthocQuantile):
    """The post-hoc rule with a sentence embedding of the prompt added to its inputs."""

    use_embedding = True

    def __init__(self, c: float = 0.05, **kw: Any) -> None:
        super().__init__(c=c, **kw)


@register("posthoc_hidden")
class PosthocHidden(PosthocQuantile):
    """The post-hoc rule over the token features, the prompt embedding and the small LM's
    own hidden states (last prompt token, mean over the generated tokens)."""

    use_embedding = True
    use_hidden = True

    def __init__(self, c: float = 0.02, **kw: Any) -> None:
        super().__init__(c=c, **kw)
