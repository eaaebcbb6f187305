"""Quality of a small LM's answer judged against the large LM's answer for the same prompt.

A deferral rule for generated text learns whether the small answer is *acceptable*: its
quality (against the large answer) reaches the task's threshold. Measures: normalised exact
match (short answers), token F1 and ROUGE-L (overlap), and cosine similarity of sentence
embeddings (free text; needs an encoder backend).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Protocol

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


class Embedder(Protocol):
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (as SQuAD scores answers)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(a: str, b: str) -> float:
    return float(normalise(a) == normalise(b))


def token_f1(a: str, b: str) -> float:
    ta, tb = normalise(a).split(), normalise(b).split()
    if not ta or not tb:
        return float(ta == tb)
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(a: str, b: str) -> float:
    ta, tb = normalise(a).split(), normalise(b).split()
    if not ta or not tb:
        return float(ta == tb)
    lcs = _lcs(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(ta), lcs / len(tb)
    return 2 * p * r / (p + r)


MEASURES = ("exact", "token_f1", "rouge_l", "cosine")


class QualityMeasure:
    """``score`` in [0, 1]; ``acceptable`` when the score reaches ``threshold``."""

    def __init__(self, measure: str, threshold: float, embedder: Embedder | None = None) -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown quality measure {measure!r}; known: {MEASURES}")
        if measure == "cosine" and embedder is None:
            raise ValueError("the cosine measure needs an encoder backend")
        self.measure, self.threshold, self.embedder = measure, threshold, embedder

    def scores(self, small: list[str], large: list[str]) -> np.ndarray:
        if self.measure == "cosine":
            assert self.embedder is not None
            e = self.embedder.embed(list(small) + list(large))
            n = len(small)
            return np.clip(np.sum(e[:n] * e[n:], axis=1), 0.0, 1.0)
        fn: Any = {"exact": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}[self.measure]
        return np.array([fn(a, b) for a, b in zip(small, large, strict=True)])

    def score(self, small: str, large: str) -> float:
        return float(self.scores([small], [large])[0])

    def acceptable(self, small: str, large: str) -> bool:
        return self.score(small, large) >= self.threshold
