"""In-context imitation: the small LM sees the nearest large-LM demonstrations as few-shot
turns (``params.icl_k``). Real MiniLM embeddings, real SmolLM2 answers, and the index carried
through a published version into a fresh serving process."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.config import LevelConfig, TaskConfig
from cascade.levels.base import Demo
from cascade.levels.lm import LocalLMLevel
from cascade.levels.neighbours import DemoIndex
from cascade.versions import TaskState, dump_state, load_state
from tests.test_levels import classify_task, query

LABELS = ["positive", "negative"]
SEEN = [
    ("the pasta was cold and the waiter was rude", "negative"),
    ("a moving, beautifully acted film about a family", "positive"),
    ("the battery died after two days, a waste of money", "negative"),
    ("an exhilarating thriller with a superb cast", "positive"),
]


def icl_level(backend, encoder, **params: object) -> tuple[LocalLMLevel, TaskConfig]:
    cfg = LevelConfig(
        name="small",
        kind="local_lm",
        backend="small",
        cost=0.1,
        params={"icl_k": 2, "embed": "minilm", **params},
    )
    task = classify_task(LABELS, cfg)
    level = LocalLMLevel(cfg, task, backend)
    level.encoder = encoder
    return level, task


def embedded_demos(encoder, pairs: list[tuple[str, str]]) -> list[Demo]:
    vecs = encoder.embed([t for t, _ in pairs])
    return [
        Demo(id=f"0-{i}", text=t, label=lab, output=lab, levels={}, embedding=v)
        for i, ((t, lab), v) in enumerate(zip(pairs, vecs, strict=True))
    ]


@pytest.fixture(scope="module")
def models(shared_backends: dict[str, object]) -> tuple[object, object]:
    return shared_backends["small"], shared_backends["minilm"]


async def test_nearest_demonstrations_become_few_shot_turns(models) -> None:
    small, minilm = models
    level, task = icl_level(small, minilm)
    q = query(task, "the soup was cold and the staff were rude")
    assert await level.few_shot(q) == q.messages  # nothing learned yet: zero-shot

    assert level.learn(embedded_demos(minilm, SEEN)) is True
    msgs = await level.few_shot(query(task, "the soup was cold and the staff were rude"))
    roles = [m["role"] for m in msgs]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0] == q.messages[0] and msgs[-1] == q.messages[-1]
    # the closest demonstration sits right before the query, with the large LM's label
    assert SEEN[0][0] in msgs[3]["content"] and msgs[4]["content"] == "negative"

    out = await level.predict(query(task, "the soup was cold and the staff were rude"))
    assert out.valid and out.label in LABELS and out.probs is not None


async def test_few_shot_changes_the_small_lms_answer(models) -> None:
    """The demonstrations reach the model: the same input gets another distribution."""
    small, minilm = models
    level, task = icl_level(small, minilm)
    text = "the battery died after a week and support never answered"
    before = await level.predict(query(task, text))
    level.learn(embedded_demos(minilm, SEEN))
    after = await level.predict(query(task, text))
    # zero-shot, SmolLM2 starts a sentence ("This ..."), with some mass on the labels; shown
    # how the large LM answers, it answers with a label, from another distribution
    assert after.valid is True and after.label in LABELS
    assert after.lm is not None and after.lm.text.strip() in LABELS
    assert before.probs is None or not np.allclose(before.probs, after.probs, atol=1e-3)


async def test_index_travels_in_a_version(models) -> None:
    small, minilm = models
    learner_side, _ = icl_level(None, None)  # the learner process loads no LM and no encoder
    assert learner_side.learn(embedded_demos(minilm, SEEN))
    state = TaskState("t", LABELS, levels={"small": learner_side.state()})
    restored = load_state(dump_state(state))

    serving, task = icl_level(small, minilm)
    serving.load_state(restored.levels["small"])
    assert serving.index.texts == learner_side.index.texts
    assert serving.index.labels == learner_side.index.labels
    q = query(task, "an exhilarating, superbly acted thriller")
    msgs = await serving.few_shot(q)
    assert SEEN[3][0] in msgs[-3]["content"] and msgs[-2]["content"] == "positive"


def test_index_keeps_the_newest_and_shortens_texts() -> None:
    index = DemoIndex(capacity=3, words=4)
    vecs = np.eye(5, dtype=np.float32)
    index.add(vecs[:4], [f"text number {i} is long" for i in range(4)], [0, 1, 0, 1])
    index.add(vecs[4:], ["last"], [1])
    assert index.texts == ["text number 2 is", "text number 3 is", "last"]
    assert index.labels == [0, 1, 1]
    assert index.nearest(vecs[2], 1) == [("text number 2 is", 0)]
    assert [lab for _, lab in index.nearest(vecs[4], 3)][-1] == 1  # closest last
    assert DemoIndex().nearest(vecs[0], 2) == []
    again = DemoIndex(capacity=3, words=4)
    again.load_state(index.state())
    assert again.texts == index.texts and again.labels == index.labels
    np.testing.assert_allclose(again.vecs, index.vecs, atol=1e-3)
