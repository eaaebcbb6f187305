"""The deferral-policy contract: a policy sees plain features and says answer or defer.

Policies never see a level, a model or a request: only ``Features`` (arrays and numbers), so the
same policy serves a logistic regression, an encoder or an LM, and can be trained offline on
recorded demonstrations exactly as online.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, Unpack

import numpy as np

from policies.explore import Explorer
from policies.operating import OperatingPoint

if TYPE_CHECKING:
    from policies.abort import EarlyAbort


class Knob(TypedDict, total=False):
    """What every policy with a target takes beside it: one list, so a policy kind passes
    them on without naming them again."""

    warmup: int  # send the first n items on to the large LM (explore.py)
    learn_share: float  # the share a level that cannot answer yet runs on (default 1)
    min_answer_share: float  # the answer share below which it costs more than it saves
    idle_share: float | None  # the share once even the upper bound says it cannot pay
    enter_z: float | None  # the z a level must show the target at to start answering


@dataclass
class Features:
    """What a level's answer looks like to a policy.

    ``confidence`` is the level's own score in [0, 1] (top class probability, or a sequence
    score for generated text); ``probs`` the class distribution (classify); ``token_logprobs``
    and ``entropies`` the per-token signals of generated text; ``extra`` named scalars such as
    agreement with the levels before; ``embedding`` an optional sentence embedding of the
    prompt; ``hidden`` the small LM's own final hidden states (last prompt token, then their
    mean over the generated tokens), where a local LM generated the answer.
    """

    confidence: float
    probs: np.ndarray | None = None
    token_logprobs: np.ndarray | None = None
    entropies: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    hidden: np.ndarray | None = None

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
    Whether an item also explores is the runner's coin, not the policy's."""

    defer: bool
    score: float


class PolicyError(ValueError):
    """A policy's configuration is invalid."""


def check_number(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise PolicyError(f"{name} must be a finite number, got {value!r}")
    return v


def check_unit(name: str, value: float) -> float:
    v = check_number(name, value)
    if not 0.0 <= v <= 1.0:
        raise PolicyError(f"{name} must be between 0 and 1, got {v}")
    return v


def check_target(value: float) -> float:
    """An agreement target is a share in (0, 1]: 0 would let a level answer anything."""
    v = check_unit("target_agreement", value)
    if v <= 0.0:
        raise PolicyError(f"target_agreement must be in (0, 1], got {v}")
    return v


class Policy(ABC):
    """A deferral rule for one level: ``decide`` on features, ``update`` from demonstrations.

    The base owns what every rule shares: the explorer (how often an item goes on to the large
    LM anyway) and, with ``target_agreement``, the operating point that holds the measured
    agreement at the target. ``params``, ``set_params``, ``report`` and the state pair cover
    both, so a rule adds its score, how the operating point re-scores its window
    (``inputs``/``score_batch``) and its own parameters (``settable``/``check_param``).
    """

    kind: ClassVar[str]
    #: own run-time parameters besides ``target_agreement``: shown by ``params``, set by name
    settable: ClassVar[tuple[str, ...]] = ()
    #: keep the level's own deferrals as evidence at their score: only where the score never
    #: moves as the policy learns (see operating.py)
    keeps_deferred: ClassVar[bool] = False
    #: with a target, count exploration's k in items decided on, not only demonstrations
    counts_traffic: ClassVar[bool] = True
    #: generated text: stops the level's generation once its answer will be deferred anyway
    abort: EarlyAbort | None = None

    def __init__(
        self,
        target_agreement: float | None = None,
        beta: float | None = None,
        explore_floor: float | None = None,
        **knob: Unpack[Knob],
    ) -> None:
        unknown = set(knob) - set(Knob.__annotations__)
        if unknown:  # make_policy turns this into a PolicyError naming the kind
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        warmup = knob.get("warmup", 0)
        learn_share = knob.get("learn_share", 1.0)
        idle_share, enter_z = knob.get("idle_share"), knob.get("enter_z")
        target = None if target_agreement is None else check_target(target_agreement)
        self.learn_share = check_unit("learn_share", learn_share)
        self.min_answer_share = check_unit("min_answer_share", knob.get("min_answer_share", 0.0))
        if self.learn_share <= 0.0:
            raise PolicyError("learn_share must be in (0, 1]: a level that never runs never learns")
        idle = self.learn_share if idle_share is None else check_unit("idle_share", idle_share)
        if not 0.0 < idle <= self.learn_share:
            raise PolicyError(
                f"idle_share must be in (0, learn_share={self.learn_share:g}]: a level that "
                f"never runs never learns, got {idle_share}"
            )
        self.idle_share = idle
        if enter_z is not None and not 0.5 <= check_number("enter_z", enter_z) <= 5.0:
            # below the knob's own z (0.5) starting would be easier than staying: it flaps
            raise PolicyError(f"enter_z must be in [0.5, 5] (the knob holds at 0.5), got {enter_z}")
        self.enter_z = enter_z
        self.op = None if target is None else self._operating_point(target)
        has_target = self.op is not None and self.counts_traffic
        self.explorer = Explorer.for_policy(has_target, beta, explore_floor, warmup)

    def _operating_point(self, target: float) -> OperatingPoint:
        """The knob, with the level's break-even share as the share that counts as answering
        (the hysteresis of ``enter_z`` applies below it)."""
        return OperatingPoint(target, enter_z=self.enter_z, min_share=self.min_answer_share)

    @property
    def learned(self) -> bool:
        """Whether demonstrations change what a published version holds."""
        return self.op is not None

    @property
    def cannot_answer(self) -> bool:
        """With a target: its operating point has not yet shown it (it answers nothing), or
        it answers less than ``min_answer_share`` of the traffic. A level that costs a share c
        of the large LM saves only where it answers more than c of what it runs on: below
        that, running it on everything costs more than the large LM alone, so it runs on its
        learning sample only until its answer share pays for it."""
        return self.op is not None and not self.op.answering  # the op holds min_answer_share

    @property
    def plainly_cannot_pay(self) -> bool:
        """It cannot answer, and even its agreement estimate's upper bound answers less than
        ``min_answer_share``: more samples are unlikely to make it pay."""
        if self.op is None or not self.cannot_answer:
            return False
        return self.op.hoped_share < self.min_answer_share

    @property
    def sample_only(self) -> bool:
        """Whether the walk runs this level on a sample of its traffic only (``run_share``)."""
        return self.cannot_answer

    @property
    def run_share(self) -> float:
        """The share of its traffic the walk runs this level on: all of it once it can answer
        (or, where ``sample_only`` says so, while it may yet pay); ``learn_share`` while it
        learns; ``idle_share`` once it plainly cannot pay, so a level that cannot meet the
        target on this traffic costs next to nothing, yet still learns, and runs on
        ``learn_share`` again once its estimate says it may pay."""
        if not self.sample_only:
            return 1.0
        return self.idle_share if self.plainly_cannot_pay else self.learn_share

    @property
    def explore_probability(self) -> float:
        """How often this policy wants an item sent on to the large LM to learn from it."""
        if self.explorer.need and self.op is not None:
            return self.explorer.by_need(len(self.op.samples))
        return self.explorer.probability

    @abstractmethod
    def decide(self, features: Features) -> Decision: ...

    def score(self, features: Features) -> float:
        """Deferral score without exploration; higher means more reason to defer."""
        return self.decide(features).score

    def inputs(self, features: Features) -> np.ndarray:
        """What the operating point keeps per sample: re-scored by ``score_batch`` at every
        refit, since a learned score moves."""
        return np.array([self.score(features)], dtype=np.float32)

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0]

    def update(
        self, features: Features, wrong: bool, explored: bool, deferred: bool = False
    ) -> None:
        """Learn from one demonstration: ``wrong`` when the level's answer disagreed with the
        large LM (deferring was right); ``explored`` when the item was an exploration sample;
        ``deferred`` when this level (and every one before it) deferred it on its own, kept
        as evidence of agreement at its score where ``keeps_deferred``."""
        self.explorer.seen += 1
        if self.op is None or not (explored or (deferred and self.keeps_deferred)):
            return
        self.op.observe(self.inputs(features), not wrong, deferred=not explored)
        self.op.refit(self.score_batch)

    def remember(self, features: Features, wrong: bool) -> None:  # noqa: B027 (optional)
        """Rebuild training memory after a learner restart (no learning step, no counts)."""

    # ------------------------------------------------------------------ operator surface

    @property
    def operating_threshold(self) -> float:
        """The operating point's threshold as the operator reads it (on the score)."""
        return 0.0 if self.op is None else self.op.threshold

    def params(self) -> dict[str, float]:
        """The live, operator-visible parameters (thresholds, mu, targets)."""
        out = {k: getattr(self, k) for k in self.settable if getattr(self, k) is not None}
        out["explore_probability"] = self.explorer.probability
        if self.explorer.warmup:
            out["warmup"] = self.explorer.warmup
        if self.op is not None:
            out["target_agreement"] = self.op.target
            out["operating_threshold"] = self.operating_threshold
            # read-only, for the operator: the share of its traffic the level runs on now
            # (1 answering; learn_share learning; idle_share once it plainly cannot pay)
            out["run_share"] = self.run_share
        return out

    def check_param(self, name: str, value: float) -> float:
        """A valid value for the own parameter ``name`` (PolicyError otherwise)."""
        return check_number(name, value)

    def set_params(self, **params: float) -> None:
        """Change parameters at run time: all are checked before any is set."""
        unknown = set(params) - {*self.settable, "target_agreement"}
        if unknown:
            raise PolicyError(f"{self.kind} policy has no parameter(s) {sorted(unknown)}")
        own = {k: self.check_param(k, v) for k, v in params.items() if k != "target_agreement"}
        target = params.get("target_agreement")
        target = None if target is None else check_target(target)
        for k, v in own.items():
            setattr(self, k, v)
        if target is None:
            return
        if self.op is None:
            self.op = self._operating_point(target)
            if self.counts_traffic:
                self.explorer.keep_target_floor()
        else:
            self.op.target = target
        self.op.refit(self.score_batch)

    def report(self) -> dict[str, object]:
        """What the policy knows about its own quality (the agreement estimate)."""
        return {"agreement_estimate": self.op.estimate()} if self.op else {}

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        out = {"seen": np.array([self.explorer.seen], dtype=np.int64)}
        if self.op is not None:
            out.update(self.op.state())
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Adopt what the learner published; a rule with learned parameters loads them first,
        so that the operating point re-scores its window with them."""
        if "seen" in arrays:
            self.explorer.seen = int(arrays["seen"][0])
        if self.op is not None:
            self.op.load_state(arrays)
            self.op.rescore(self.score_batch)


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
        for k in ("chow_sum", "chow_average", "chow_quantile", "entropy_mean")
    },
    **{k: "policies.posthoc" for k in ("posthoc_quantile", "posthoc_embed", "posthoc_hidden")},
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
