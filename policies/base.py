"""The deferral-policy contract: a policy sees plain features and says answer or defer.

Policies never see a level, a model or a request: only ``Features`` (arrays and numbers), so the
same policy serves a logistic regression, an encoder or an LM, and can be trained offline on
recorded demonstrations exactly as online.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from policies.explore import Explorer


@dataclass
class Features:
    """What a level's answer looks like to a policy.

    ``confidence`` is the level's own score in [0, 1] (top class probability, or a sequence
    score for generated text); ``probs`` the class distribution (classify); ``token_logprobs``
    and ``entropies`` the per-token signals of generated text; ``extra`` named scalars such as
    agreement with the levels before; ``embedding`` an optional prompt or hidden-state vector.
    """

    confidence: float
    probs: np.ndarray | None = None
    token_logprobs: np.ndarray | None = None
    entropies: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"confidence": float(self.confidence)}
        if self.probs is not None:
            out["probs"] = [round(float(p), 6) for p in self.probs]
        if self.token_logprobs is not None:
            out["token_logprobs"] = [round(float(p), 5) for p in self.token_logprobs]
        if self.entropies is not None:
            out["entropies"] = [round(float(p), 5) for p in self.entropies]
        if self.extra:
            out["extra"] = {k: float(v) for k, v in self.extra.items()}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Features:
        def arr(key: str) -> np.ndarray | None:
            v = d.get(key)
            return None if v is None else np.asarray(v, dtype=np.float64)

        return cls(
            confidence=float(d.get("confidence", 0.0)),
            probs=arr("probs"),
            token_logprobs=arr("token_logprobs"),
            entropies=arr("entropies"),
            extra=dict(d.get("extra") or {}),
        )


@dataclass(frozen=True)
class Decision:
    """``defer``: the policy's verdict. ``score``: its deferral score (higher = defer).
    ``explore``: the item goes on to the large LM whatever the verdict (one coin per request,
    flipped by the runner with the largest ``explore_probability`` of the task's policies), so
    each level's answer is compared with the large LM's on a uniform sample of its traffic."""

    defer: bool
    score: float
    explore: bool = False


class PolicyError(ValueError):
    """A policy's configuration is invalid."""


class Policy(ABC):
    """A deferral rule for one level. Learned policies override ``update`` and the state pair."""

    kind: ClassVar[str]
    learned: ClassVar[bool] = False
    explorer: Explorer | None = None

    @property
    def explore_probability(self) -> float:
        """How often this policy wants an item sent on to the large LM to learn from it."""
        return 0.0 if self.explorer is None else self.explorer.probability

    @abstractmethod
    def decide(self, features: Features) -> Decision: ...

    def score(self, features: Features) -> float:
        """Deferral score without exploration; higher means more reason to defer."""
        return self.decide(features).score

    def update(  # noqa: B027
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        """Learn from one demonstration: ``wrong`` when the level's answer disagreed with the
        large LM (deferring was right); ``explored`` when the item was an exploration sample;
        ``deferred`` when this level (and every one before it) deferred it on its own; a policy
        may keep such items as evidence of agreement at their score (ThresholdPolicy does)."""

    def remember(self, features: Features, wrong: bool) -> None:  # noqa: B027 (optional)
        """Rebuild training memory after a learner restart (no learning step, no counts)."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional)
        """Adopt learned parameters published by the learner."""

    def params(self) -> dict[str, float]:
        """The live, operator-visible parameters (thresholds, mu, targets)."""
        return {}

    def report(self) -> dict[str, object]:
        """What the policy knows about its own quality (e.g. the agreement estimate)."""
        return {}

    def set_params(self, **params: float) -> None:
        raise PolicyError(f"policy {self.kind!r} has no parameters to set")


_REGISTRY: dict[str, Callable[..., Policy]] = {}


def register(kind: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


#: Policies whose module is imported on first use (torch is a heavy import).
_LAZY = {
    "ocl": "policies.ocl",
    **{
        k: "policies.generative"
        for k in (
            "chow_sum",
            "chow_average",
            "chow_quantile",
            "entropy_mean",
            "posthoc_quantile",
            "posthoc_embed",
        )
    },
}


def make_policy(kind: str, **params: Any) -> Policy:
    """Build a policy by kind; unknown kinds and bad parameters raise PolicyError."""
    if kind not in _REGISTRY and kind in _LAZY:
        importlib.import_module(_LAZY[kind])
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise PolicyError(f"unknown policy kind {kind!r}; known: {known_policies()}") from None
    try:
        return factory(**params)
    except (TypeError, ValueError) as e:
        if isinstance(e, PolicyError):
            raise
        raise PolicyError(f"policy {kind!r}: {e}") from e


def known_policies() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))
