"""What the learner does with one task's demonstrations (CPU work, run in a worker thread).

For each demonstration it works out, per cheaper level, whether that level's answer was good
enough: the same label as the expert for classify tasks; for generated text, *acceptable*
next to the large LM's answer by the task's quality measure. Then every policy learns from
its level's features and that verdict (OCL policies also take one joint step on the cascade
loss), and the trainable levels learn from the demonstrations.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade.counters import LevelStat, level_key
from cascade.demos import decode_vector
from cascade.levels import Demo, Level
from cascade.quality import QualityMeasure
from cascade.versions import TaskState
from policies import Features, Policy
from policies.ocl import OCLPolicy, OCLStep, ocl_update


@dataclass
class TaskLearner:
    """The learner's own copy of one task's trainable levels and learned policies."""

    task: str
    labels: list[str]
    levels: list[Level]  # trainable cheaper levels
    policies: dict[str, Policy]  # by level name, non-final levels
    level_costs: dict[str, float]
    order: list[str]  # every level of the task, in cascade order
    quality: QualityMeasure | None = None  # generate tasks: when is an answer acceptable
    applied_id: str | None = None
    demos: int = 0
    ignored: int = 0
    since_publish: int = 0
    last_publish: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0  # time spent learning, for the learner's throughput

    @property
    def generate(self) -> bool:
        return not self.labels

    def absorb(self, batch: list[Demo]) -> tuple[bool, dict[str, float]]:
        """Learn from a batch. Returns whether anything changed, and agreement counters."""
        t0 = time.perf_counter()
        usable = [d for d in batch if d.label is not None or d.output or d.source == "feedback"]
        self.ignored += len(batch) - len(usable)
        # feedback outranks the large LM for the same item: apply it last, twice
        usable.sort(key=lambda d: d.source == "feedback")
        usable += [d for d in usable if d.source == "feedback"]
        counts = self.judge(usable)
        changed = False
        for d in usable:
            changed = self._learn_policies(d) or changed
        for lv in self.levels:
            changed = lv.learn(usable) or changed
        self.demos += len(batch)
        self.since_publish += len(batch)
        if batch:
            self.applied_id = batch[-1].id
        self.busy_s += time.perf_counter() - t0
        return changed, counts

    def judge(self, demos: list[Demo]) -> dict[str, float]:
        """Mark generated answers acceptable or not (``rec["acceptable"]``); count agreement
        for generate tasks (the runner counts it for classify tasks)."""
        counts: dict[str, float] = defaultdict(float)
        if not self.generate or self.quality is None:
            return counts
        pairs = [
            (d, name, rec)
            for d in demos
            for name, rec in d.levels.items()
            if rec.get("text")
            and rec.get("valid", True)
            and not rec.get("aborted")
            and "acceptable" not in rec
        ]
        if not pairs:
            return counts
        scores = self.quality.scores(
            [rec["text"] for _, _, rec in pairs], [d.output for d, _, _ in pairs]
        )
        for (_, name, rec), q in zip(pairs, scores, strict=True):
            rec["quality"] = float(q)
            rec["acceptable"] = bool(q >= self.quality.threshold)
            counts[level_key(name, LevelStat.AGREE_N)] += 1
            counts[level_key(name, LevelStat.AGREE)] += float(rec["acceptable"])
        return counts

    def _wrong(self, rec: dict[str, Any], d: Demo) -> bool | None:
        """Was deferring right? None when this demonstration cannot tell."""
        if "acceptable" in rec:
            return not rec["acceptable"]
        if d.label is not None:
            return rec.get("label") != d.label
        return None

    def _learn_policies(self, d: Demo) -> bool:
        changed = False
        genuine = True  # every earlier level deferred on its own: an unbiased sample here
        chain: list[OCLStep] = []
        for name, pol in self.policies.items():
            rec = d.levels.get(name)
            pos = self.order.index(name)
            next_cost = self.level_costs[self.order[pos + 1]]
            usable = rec is not None and rec.get("ready", True) and rec.get("valid", True)
            feats = demo_features(rec, d) if usable and rec else None
            decision = (rec or {}).get("decision") or {}
            wrong = self._wrong(rec, d) if feats is not None and rec is not None else None
            if feats is not None and wrong is not None:
                # feedback is no sample of the traffic (clients choose what to correct): it
                # teaches the policy but is no evidence for its agreement estimate
                sampled = genuine and d.source != "feedback"
                explored = bool(decision.get("explored")) and sampled
                # a deferral became a demonstration only if every later cheap level deferred
                # too, which depends on more than this level's score: evidence at its score
                # only on the last cheap level
                last = pos == len(self.order) - 2
                deferred = bool(decision.get("defer")) and sampled and not explored and last
                pol.update(feats, wrong, explored, deferred)
                _learn_abort(pol, feats, decision)
                changed = changed or pol.learned
            if isinstance(pol, OCLPolicy):
                ok = feats is not None and feats.probs is not None and d.label in self.labels
                chain.append(
                    OCLStep(
                        pol,
                        feats,
                        next_cost,
                        feats.probs if ok and feats is not None else None,
                        self.labels.index(d.label) if ok and d.label is not None else None,
                    )
                )
            genuine = genuine and bool(decision.get("defer", True))
        if chain:
            changed = ocl_update(chain) != 0.0 or changed
        return changed

    def remember(self, demos: list[Demo]) -> None:
        """Rebuild training memory from demonstrations a restored version already holds."""
        self.judge(demos)
        for lv in self.levels:
            lv.remember(demos)
        for d in demos:
            for name, pol in self.policies.items():
                rec = d.levels.get(name)
                if rec is None or not rec.get("ready", True) or not rec.get("valid", True):
                    continue
                wrong = self._wrong(rec, d)
                if wrong is not None:
                    pol.remember(demo_features(rec, d), wrong)

    def snapshot(self) -> TaskState:
        return TaskState(
            task=self.task,
            labels=self.labels,
            levels={lv.name: lv.state() for lv in self.levels if lv.state()},
            policies={n: p.state() for n, p in self.policies.items() if p.state()},
            meta={
                "applied_id": self.applied_id or "",
                "demos": str(self.demos),
                "created": f"{time.time():.3f}",
            },
        )

    def restore(self, state: TaskState) -> None:
        for lv in self.levels:
            if lv.name in state.levels:
                lv.load_state(state.levels[lv.name])
        for name, pol in self.policies.items():
            if name in state.policies:
                pol.load_state(state.policies[name])
        self.applied_id = state.applied_id
        self.demos = state.demos


def _learn_abort(pol: Policy, feats: Features, decision: dict[str, Any]) -> None:
    """Teach the early-abort head what the rule, as it is now, makes of this finished answer.
    A demonstration holds every answer the rule deferred but only the explored share of those
    it answered: an answered one stands for 1 / its exploration chance of them."""
    if pol.abort is None or pol.cannot_answer or feats.hidden is None or not decision:
        return
    if feats.token_logprobs is None:
        return
    n = len(feats.hidden) // 2
    weight = 1.0 if decision.get("defer") else 1.0 / max(float(decision.get("explore_p", 1)), 0.01)
    pol.abort.learn(
        feats.hidden[:n],
        feats.embedding,
        list(feats.token_logprobs),
        list(feats.entropies) if feats.entropies is not None else [],
        pol.decide(feats).defer,
        weight,
    )


def demo_features(rec: dict[str, Any], d: Demo) -> Features:
    """A level's features as its policy saw them, rebuilt from a demonstration: the prompt
    embedding and, for generated text, the small LM's hidden states travel beside them."""
    feats = Features.from_json(rec.get("features", {}))
    if feats.embedding is None:
        feats.embedding = d.embedding
    if rec.get("hidden") and rec.get("hidden_gen"):
        feats.hidden = np.concatenate(
            [decode_vector(rec["hidden"]), decode_vector(rec["hidden_gen"])]
        )
    return feats
