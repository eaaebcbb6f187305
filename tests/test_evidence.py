"""Which demonstrations the learner hands a policy as evidence for its agreement estimate:
explored items (a uniform sample of the level's traffic), items the level deferred on its own
(evidence at their confidence), and never client feedback (clients choose what to correct)."""

from __future__ import annotations

from typing import Any

from cascade.levels.base import Demo
from cascade.task_learner import TaskLearner
from policies import Features, ThresholdPolicy


def record(label: str, confidence: float, defer: bool, explored: bool) -> dict[str, Any]:
    return {
        "label": label,
        "features": Features(confidence=confidence).to_json(),
        "decision": {
            "defer": defer,
            "score": 1 - confidence,
            "explored": explored,
            "explore_p": 0.5,
        },
    }


def learner() -> tuple[TaskLearner, ThresholdPolicy]:
    pol = ThresholdPolicy(target_agreement=0.9)
    tl = TaskLearner(
        task="t",
        labels=["a", "b"],
        levels=[],
        policies={"small": pol},
        level_costs={"small": 0.5, "large": 1.0},
        order=["small", "large"],
    )
    return tl, pol


def test_only_the_last_cheap_level_takes_its_deferrals_as_evidence() -> None:
    """An earlier level's deferral reached the large LM only if the later levels deferred as
    well, which says more than that level's score: not evidence of agreement at its score."""
    first, last = ThresholdPolicy(target_agreement=0.9), ThresholdPolicy(target_agreement=0.9)
    tl = TaskLearner(
        task="t",
        labels=["a", "b"],
        levels=[],
        policies={"encoder": first, "small": last},
        level_costs={"encoder": 0.01, "small": 0.5, "large": 1.0},
        order=["encoder", "small", "large"],
    )
    rec = record("b", 0.55, defer=True, explored=False)
    tl.absorb(
        [Demo(id="1-0", text="x", label="a", output="a", levels={"encoder": rec, "small": rec})]
    )
    assert not first.op.deferred and len(last.op.deferred) == 1


def demo(i: int, rec: dict[str, Any], source: str = "llm", label: str = "a") -> Demo:
    return Demo(
        id=f"{i}-0",
        text=f"item {i}",
        label=label,
        output=label,
        levels={"small": rec},
        source=source,
    )


def test_explored_and_deferred_items_are_evidence_of_their_kind() -> None:
    tl, pol = learner()
    tl.absorb(
        [
            demo(1, record("a", 0.95, defer=False, explored=True)),  # would answer; explored
            demo(2, record("b", 0.55, defer=True, explored=False)),  # deferred on its own
            demo(3, record("a", 0.60, defer=True, explored=True)),  # both: a uniform sample
        ]
    )
    assert [a for _, a in pol.op.samples] == [1.0, 1.0]
    assert [a for _, a in pol.op.deferred] == [0.0]
    assert pol.explorer.seen == 3


def test_feedback_teaches_but_is_no_evidence() -> None:
    tl, pol = learner()
    tl.absorb(
        [
            demo(1, record("a", 0.95, defer=False, explored=True), source="feedback", label="b"),
            demo(2, record("a", 0.55, defer=True, explored=False), source="feedback", label="b"),
        ]
    )
    assert not pol.op.samples and not pol.op.deferred
    assert pol.explorer.seen == 4  # feedback is applied twice: it outranks the large LM
