"""Replaying a recorded generative stream through a cascade whose policies learn online.

Each item is decided before anything about it is learned, in stream order, with the policy
classes the gateway runs (policies/): the exploration coin, the operating point that holds
``target_agreement``, the learned rule's refits, the early-abort head, the pre-router. What
the gateway would learn from is exactly what the simulation learns from: an item teaches the
small level's rule only when the large LM answered it and the small answer was finished.

While a rule with a target cannot yet show it meets it (its operating point answers nothing),
the small LM runs on a learning sample of the traffic only (``learn_share``); the rest goes
straight to the large LM, so a fresh deployment costs little more than the large LM alone.
Those sampled items are a uniform sample of the traffic, so they count as explored.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.gen_data import Trace
from bench.gen_timing import Costs
from policies import Features, Policy, make_policy
from policies.abort import EarlyAbort
from policies.linear import LinearHead


@dataclass(frozen=True)
class System:
    """One cascade configuration to replay."""

    system: str  # llm_only | small_only | cascade
    rule: str | None = None
    kind: dict[str, Any] | None = None
    target: float | None = None
    threshold: float | None = None
    early_abort: bool = False
    prerouter: bool = False

    @property
    def name(self) -> str:
        if self.system != "cascade":
            return self.system
        knob = f"t={self.target}" if self.target is not None else f"thr={self.threshold:.4g}"
        extras = "".join(
            f"+{x}" for x, on in (("abort", self.early_abort), ("router", self.prerouter)) if on
        )
        return f"{self.rule} {knob}{extras}"


@dataclass
class ItemRun:
    quality: float
    answered: bool  # served the small LM's answer
    small_ran: bool
    aborted: bool
    large: bool
    ms: float
    cost: float


class Router:
    """The pre-router's view: P(the small LM's answer is accepted) from the prompt embedding,
    learned online from the items where both answers are known (cascade/levels/router.py
    does the same in the gateway)."""

    def __init__(self, threshold: float, min_examples: int = 100, refit_every: int = 32) -> None:
        self.threshold = threshold
        self.head = LinearHead(c=0.05, max_iter=300, warm_start=True)
        self.xs: list[np.ndarray] = []
        self.ys: list[int] = []
        self.min_examples, self.refit_every = min_examples, refit_every

    def skip(self, emb: np.ndarray) -> bool:
        if not self.head.fitted:
            return False
        p_ok = 1.0 / (1.0 + np.exp(-self.head.decision_function(emb[None])[0]))
        return bool(p_ok < self.threshold)

    def learn(self, emb: np.ndarray, acceptable: bool) -> None:
        self.xs.append(emb)
        self.ys.append(int(acceptable))
        n = len(self.ys)
        if n >= self.min_examples and n % self.refit_every == 0:
            self.head.fit(np.stack(self.xs), np.array(self.ys))


@dataclass
class Sim:
    traces: list[Trace]
    costs: Costs
    quality_threshold: float
    small_cost: float
    seed: int = 0
    learn_share: float = 0.25
    idle_share: float | None = None  # default: learn_share
    enter_z: float | None = None  # default: the knob's own z
    min_answer_share: float | None = None  # default: the small level's cost
    router_threshold: float = 0.25
    rows: list[ItemRun] = field(default_factory=list)

    def features(self, tr: Trace) -> Features:
        return Features(
            confidence=math.exp(tr.lps.mean()) if tr.lps.size else 0.0,
            token_logprobs=tr.lps,
            entropies=tr.ents,
            embedding=tr.emb,
            hidden=np.concatenate([tr.h_prompt, tr.h_gen]),
        )

    def run(self, s: System) -> list[ItemRun]:
        rng = random.Random(self.seed)
        pol: Policy | None = None
        if s.system == "cascade":
            assert s.kind is not None
            knob: dict[str, float | None] = {}
            if s.target is not None:
                pays = self.small_cost if self.min_answer_share is None else self.min_answer_share
                knob = {
                    "target_agreement": s.target,
                    "learn_share": self.learn_share,
                    "idle_share": self.idle_share,
                    "enter_z": self.enter_z,
                    "min_answer_share": pays,
                }
            if s.threshold is not None:
                knob = {"threshold": s.threshold}
            pol = make_policy(**s.kind, **knob)
        abort = EarlyAbort() if s.early_abort else None
        router = Router(self.router_threshold) if s.prerouter else None
        out = []
        for tr in self.traces:
            out.append(self._item(s, tr, pol, abort, router, rng))
        return out

    def _item(
        self,
        s: System,
        tr: Trace,
        pol: Policy | None,
        abort: EarlyAbort | None,
        router: Router | None,
        rng: random.Random,
    ) -> ItemRun:
        c = self.costs
        acceptable = tr.quality >= self.quality_threshold
        full_ms = c.small_ms(tr.prompt_tokens, len(tr.lps))
        large_ms = c.large_ms(tr.prompt_tokens, tr.large_tokens)
        if s.system == "llm_only":
            return ItemRun(1.0, False, False, False, True, large_ms, 1.0)
        if s.system == "small_only":
            return ItemRun(tr.quality, True, True, False, False, full_ms, self.small_cost)
        assert pol is not None
        ms = c.embed_ms  # the prompt embedding (router, posthoc_embed/hidden, abort)
        if router is not None and router.skip(tr.emb):
            return ItemRun(1.0, False, False, False, True, ms + large_ms, 1.0)
        can_answer = not pol.cannot_answer
        if not can_answer and rng.random() >= pol.run_share:
            return ItemRun(1.0, False, False, False, True, ms + large_ms, 1.0)
        pol.explorer.decided()
        explored = not can_answer or rng.random() < pol.explore_probability
        n_gen = len(tr.lps)
        if abort is not None and can_answer and not explored and rng.random() >= abort.explore:
            for k in abort.checkpoints(len(tr.lps)):
                x = abort.vector(tr.h_prompt, tr.emb, tr.lps[:k], tr.ents[:k])
                if abort.should_abort(x):
                    n_gen = k
                    break
        if n_gen < len(tr.lps):  # aborted: nothing to learn, the large LM answers
            small_ms = c.small_ms(tr.prompt_tokens, n_gen)
            cost = self.small_cost * small_ms / full_ms + 1.0
            return ItemRun(1.0, False, True, True, True, ms + small_ms + large_ms, cost)
        f = self.features(tr)
        decision = pol.decide(f)
        if abort is not None and can_answer:
            abort.learn(tr.h_prompt, tr.emb, tr.lps.tolist(), tr.ents.tolist(), decision.defer)
        defer = decision.defer or explored
        if not defer:
            return ItemRun(tr.quality, True, True, False, False, ms + full_ms, self.small_cost)
        pol.update(f, wrong=not acceptable, explored=explored, deferred=not explored)
        if router is not None:
            router.learn(tr.emb, acceptable)
        return ItemRun(1.0, False, True, False, True, ms + full_ms + large_ms, self.small_cost + 1)


def summarise(rows: list[ItemRun], costs_llm_ms: float, thr: float) -> dict[str, Any]:
    q = np.array([r.quality for r in rows])
    ans = np.array([r.answered for r in rows])
    ms = np.array([r.ms for r in rows])
    large = np.array([r.large for r in rows])
    out: dict[str, Any] = {
        "acceptable": round(float((q >= thr).mean()), 4),
        "acceptable_answered": round(float((q[ans] >= thr).mean()), 4) if ans.any() else None,
        "quality": round(float(q.mean()), 4),
        "llm_share": round(float(large.mean()), 4),
        "small_share": round(float(np.mean([r.small_ran for r in rows])), 4),
        "abort_share": round(float(np.mean([r.aborted for r in rows])), 4),
        "cost_ratio": round(float(np.mean([r.cost for r in rows])), 4),
        "wall_ratio": round(float(ms.sum() / costs_llm_ms), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "deferred_p95_ms": round(float(np.percentile(ms[large], 95)), 1) if large.any() else None,
    }
    return out


def run_all(traces: list[Trace], task: Any, costs: Costs, args: Any, name: str) -> dict[str, Any]:
    from bench.gen_systems import payload_for

    return payload_for(traces, task, costs, args, name)
