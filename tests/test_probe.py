"""The small LM's probe (``params.probe``): a head on its hidden state that learns the large LM's
labels, and the average of opinions the level answers with. Real SmolLM2 answers and hidden
states; the demonstrations carry the level's own recorded features, as the gateway stores them."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.config import LevelConfig, TaskConfig
from cascade.demos import level_record
from cascade.levels.base import Demo, LevelOutput
from cascade.levels.lm import LocalLMLevel
from cascade.runtime import features_of
from tests.test_levels import LARGE, SENTIMENT_PROMPT, classify_task, query

LABELS = ["positive", "negative"]
# what the large LM said; SmolLM2 answers each with a label word, near chance
TAUGHT = [
    ("dull, predictable and far too long", "negative"),
    ("a warm, funny and generous film", "positive"),
    ("the best film of the year", "positive"),
    ("a boring waste of two hours", "negative"),
    ("a delightful, charming comedy", "positive"),
    ("an unwatchable disaster", "negative"),
    ("great performances all round", "positive"),
    ("terrible dialogue and lazy jokes", "negative"),
    ("clumsy and forgettable", "negative"),
]
ASKED = "a tedious, badly written mess"


ENCODER = LevelConfig(name="encoder", kind="encoder", backend="minilm", cost=0.01)


def small_level(backend: object, **params: object) -> tuple[LocalLMLevel, TaskConfig]:
    """The small LM level; with ``stack``, after the levels it stacks (as a config must)."""
    cfg = LevelConfig(name="small", kind="local_lm", backend="small", cost=0.1, params=params)
    if params.get("stack"):
        levels = [ENCODER, cfg, LARGE]
        task = TaskConfig(kind="classify", labels=LABELS, prompt=SENTIMENT_PROMPT, levels=levels)
    else:
        task = classify_task(LABELS, cfg)
    return LocalLMLevel(cfg, task, backend), task  # type: ignore[arg-type]


def zero_shot(out: LevelOutput) -> np.ndarray:
    return np.array([out.extra[f"zs_{lab}"] for lab in LABELS])


async def test_the_probe_answers_averaged_with_the_zero_shot_answer(shared_backends) -> None:
    level, task = small_level(shared_backends["small"], probe=True, probe_min_examples=4)
    before = await level.predict(query(task, ASKED))
    assert not level.probe_ready
    np.testing.assert_allclose(before.probs, zero_shot(before))  # untrained: zero-shot alone

    demos = []
    for i, (text, label) in enumerate(TAUGHT * 2):
        out = await level.predict(query(task, text))
        rec = level_record(out, features_of(out, []), None)
        assert out.valid and "hidden" in rec
        demos.append(Demo(id=f"0-{i}", text=text, label=label, output=label, levels={"small": rec}))
    assert level.learn(demos) is True and level.probe_ready

    after = await level.predict(query(task, ASKED))
    assert after.lm is not None and after.lm.hidden is not None
    zs = zero_shot(after)
    np.testing.assert_allclose(zs, before.probs, atol=1e-6)  # the LM itself is frozen
    probe = level.probe.proba(level.probe_input(after.lm.hidden, zs))
    # the probe alone answers worse than its average with the zero-shot answer (measured on
    # 5,000 Rotten Tomatoes items), so the level's answer is the average
    np.testing.assert_allclose(after.probs, (zs + probe) / 2, rtol=1e-5)
    assert not np.allclose(after.probs, probe, atol=1e-3)
    assert after.extra["opinions"] == 2
    assert after.confidence == pytest.approx(float(np.max((zs + probe) / 2)))
    assert after.label == LABELS[int(np.argmax((zs + probe) / 2))]


async def test_a_stack_without_a_probe_averages_the_zero_shot_answer(shared_backends) -> None:
    alone, task = small_level(shared_backends["small"])
    zs = (await alone.predict(query(task, ASKED))).probs
    assert zs is not None

    stacked, task = small_level(shared_backends["small"], stack=["encoder"])
    q = query(task, ASKED)
    sure = np.array([0.0, 1.0])
    q.shared["outputs"] = {
        "encoder": LevelOutput(name="encoder", text="negative", label="negative", probs=sure)
    }
    out = await stacked.predict(q)
    np.testing.assert_allclose(out.probs, (zs + sure) / 2, rtol=1e-5)
    assert out.extra["opinions"] == 2
