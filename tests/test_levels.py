"""Each level kind against its real model: logistic regression, MiniLM with a learned head,
SmolLM2 in-process, and SmolLM2 behind llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from cascade.backends.openai_http import OpenAIBackend
from cascade.config import LevelConfig, PromptConfig, TaskConfig
from cascade.levels.base import Demo, Level, Query
from cascade.levels.encoder import EncoderLevel
from cascade.levels.lm import LocalLMLevel, OpenAILevel, sequence_confidence
from cascade.levels.logistic import LogisticLevel
from cascade.llm_server import LocalLLMServer
from cascade.prompts import render_messages
from cascade.versions import TaskState, dump_state, load_state

LARGE = LevelConfig(name="large", kind="openai", backend="large", cost=1.0)
SENTIMENT_PROMPT = PromptConfig(
    system="You are a sentiment classifier for movie reviews.",
    user="Review: {input}\n\nIs this review positive or negative? Answer with one word.",
)
# labels a tiny model will not give as the answer to this question
ZOO = TaskConfig(
    kind="classify",
    labels=["zebra", "quokka"],
    prompt=PromptConfig(user="{input}"),
    levels=[LARGE],
)
CHAT = TaskConfig(
    kind="generate",
    max_tokens=6,
    prompt=PromptConfig(system="Answer the question in one sentence.", user="{input}"),
    levels=[LARGE],
)


def classify_task(labels: list[str], level: LevelConfig | None = None) -> TaskConfig:
    levels = [level, LARGE] if level is not None else [LARGE]
    return TaskConfig(kind="classify", labels=labels, prompt=SENTIMENT_PROMPT, levels=levels)


def query(task: TaskConfig, text: str, name: str = "t") -> Query:
    return Query(name, text, render_messages(task.prompt, text), task.max_tokens)


def demos(pairs: list[tuple[str, str]], start: int = 0) -> list[Demo]:
    return [
        Demo(id=f"0-{start + i}", text=t, label=lab, output=lab, levels={})
        for i, (t, lab) in enumerate(pairs)
    ]


async def predict_label(level: Level, task: TaskConfig, text: str) -> tuple[str | None, np.ndarray]:
    out = await level.predict(query(task, text))
    assert out.ready and out.probs is not None
    return out.label, out.probs


POS = [
    "a wonderful film",
    "great acting and a lovely story",
    "I loved it",
    "brilliant and moving",
    "a delight from start to end",
    "superb, funny and warm",
    "a wonderful cast",
    "great fun for everyone",
]
NEG = [
    "a terrible film",
    "awful acting and a boring story",
    "I hated it",
    "dull and tedious",
    "a mess from start to end",
    "boring, slow and bad",
    "a terrible cast",
    "an awful waste of time",
]
SENTIMENT = [(t, "positive") for t in POS] + [(t, "negative") for t in NEG]
random.Random(0).shuffle(SENTIMENT)


# ------------------------------------------------------------------ logistic


def logistic(labels: list[str], **params: object) -> tuple[LogisticLevel, TaskConfig]:
    cfg = LevelConfig(name="logistic", kind="logistic", cost=0.001, params=params)
    task = classify_task(labels, cfg)
    return LogisticLevel(cfg, task), task


async def test_logistic_not_ready_before_learning() -> None:
    level, task = logistic(["positive", "negative"], batch_size=8)
    out = await level.predict(query(task, "a wonderful film"))
    assert out.ready is False
    assert out.label is None and out.confidence == 0.0
    assert out.probs is not None and list(out.probs) == [0.5, 0.5]
    assert level.state() == {}
    # fewer demonstrations than a batch: still nothing learned
    assert level.learn(demos(SENTIMENT[:7])) is False
    assert (await level.predict(query(task, "x"))).ready is False


async def test_logistic_learns_toward_demonstrated_labels() -> None:
    # label order differs from sklearn's sorted classes on purpose
    level, task = logistic(["positive", "negative"], batch_size=8)
    assert level.learn(demos(SENTIMENT)) is True
    label, probs = await predict_label(level, task, "a wonderful, great film")
    assert label == "positive" and probs[0] > 0.5
    assert probs.sum() == pytest.approx(1.0)
    label, probs = await predict_label(level, task, "an awful, boring film")
    assert label == "negative" and probs[1] > 0.5
    before = (await predict_label(level, task, "great great great"))[1][0]
    # demonstrations that disagree move the prediction their way
    level.learn(demos([("great great great", "negative")] * 8, start=100))
    after = (await predict_label(level, task, "great great great"))[1][0]
    assert after < before


async def test_logistic_ignores_demos_without_a_known_label() -> None:
    level, _ = logistic(["positive", "negative"], batch_size=2)
    assert level.learn(demos([("a", "neutral"), ("b", "neutral"), ("c", "neutral")])) is False
    assert level.learn([Demo("0-9", "no label", None, "", {})] * 4) is False
    assert level.state() == {}


async def test_logistic_multiclass() -> None:
    labels = ["tech", "sports", "politics"]  # not in sorted order
    level, task = logistic(labels, batch_size=6)
    data = [
        ("new laptop processor and software update", "tech"),
        ("the football team won the match", "sports"),
        ("parliament voted on the new law", "politics"),
        ("smartphone app with faster chips", "tech"),
        ("the striker scored a goal in the final", "sports"),
        ("the minister and the election campaign", "politics"),
    ] * 4
    assert level.learn(demos(data))
    for text, want in [
        ("a software update for the laptop", "tech"),
        ("a goal in the football final", "sports"),
        ("the election and the new law", "politics"),
    ]:
        label, probs = await predict_label(level, task, text)
        assert label == want
        assert probs.shape == (3,)
        assert probs.sum() == pytest.approx(1.0)
        assert probs[labels.index(want)] == probs.max()


@pytest.mark.parametrize("labels", [["positive", "negative"], ["tech", "sports", "politics"]])
async def test_logistic_state_round_trip(labels: list[str]) -> None:
    level, task = logistic(labels)
    pairs = [(t, labels[i % len(labels)]) for i, (t, _) in enumerate(SENTIMENT)]
    level.learn(demos(pairs))
    blob = dump_state(
        TaskState(
            task="t", labels=labels, levels={"logistic": level.state()}, meta={"applied_id": "0-15"}
        )
    )
    state = load_state(blob)
    assert state.labels == labels and state.applied_id == "0-15"
    restored, _ = logistic(labels)
    restored.load_state(state.levels["logistic"])
    assert restored.updates == level.updates
    for text in ["a wonderful film", "dull and tedious", "something else entirely"]:
        a = (await predict_label(level, task, text))[1]
        b = (await predict_label(restored, task, text))[1]
        np.testing.assert_array_equal(a, b)
    # learning goes on from the restored coefficients exactly as it would have
    more = [("great great great", labels[-1])] * 8
    level.learn(demos(more, start=100))
    restored.learn(demos(more, start=100))
    np.testing.assert_allclose(restored.state()["coef"], level.state()["coef"], atol=1e-5)


# ------------------------------------------------------------------ encoder (MiniLM)

SPORT = [
    "the team won the football match",
    "she scored twice in the second half",
    "the tennis final went to five sets",
    "a marathon runner broke the record",
    "the goalkeeper saved a penalty",
    "the basketball season starts next week",
    "the cyclist won the mountain stage",
    "the coach praised his players after the game",
]
FOOD = [
    "simmer the onions in butter",
    "bake the bread for forty minutes",
    "add salt and pepper to the soup",
    "whisk the eggs with sugar and flour",
    "this pasta sauce needs more garlic",
    "grill the fish with lemon and herbs",
    "chop the carrots and fry them",
    "the recipe calls for fresh basil",
]


async def test_encoder_level_learns_separable_set(shared_backends: dict[str, object]) -> None:
    cfg = LevelConfig(name="encoder", kind="encoder", backend="minilm", cost=0.01)
    task = classify_task(["sport", "food"], cfg)
    level = EncoderLevel(cfg, task, shared_backends["minilm"])  # type: ignore[arg-type]
    assert level.encoder.dim == 384
    q = query(task, "the team lost the match")
    out = await level.predict(q)
    assert out.ready is False
    assert q.shared["embedding"].shape == (384,)  # computed once, shared with later levels
    data = [(t, "sport") for t in SPORT] + [(t, "food") for t in FOOD]
    random.Random(1).shuffle(data)
    changed = [level.learn(demos(data, start=16 * k)) for k in range(4)]  # a few passes
    assert any(changed)
    assert level.state()  # learned parameters to publish
    tests = [
        ("the striker scored a late goal", "sport"),
        ("the runners crossed the finish line", "sport"),
        ("fry the garlic in olive oil", "food"),
        ("knead the dough and let it rest", "food"),
    ]
    for text, want in tests:
        label, probs = await predict_label(level, task, text)
        assert label == want, (text, probs)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    restored = EncoderLevel(cfg, task, shared_backends["minilm"])  # type: ignore[arg-type]
    restored.load_state(
        load_state(dump_state(TaskState("t", ["sport", "food"], {"e": level.state()}))).levels["e"]
    )
    for text, _ in tests:
        np.testing.assert_allclose(
            (await predict_label(restored, task, text))[1],
            (await predict_label(level, task, text))[1],
        )


# ------------------------------------------------------------------ local_lm (SmolLM2 in-process)


@pytest.fixture(scope="module")
def small(shared_backends: dict[str, object]):
    return shared_backends["small"]


def local_lm(task: TaskConfig, backend) -> LocalLMLevel:
    cfg = LevelConfig(name="small", kind="local_lm", backend="small", cost=0.1)
    return LocalLMLevel(cfg, task, backend)


async def test_local_lm_classify(small) -> None:
    task = classify_task(["positive", "negative"])
    level = local_lm(task, small)
    out = await level.predict(query(task, "a warm and wonderful film"))
    assert out.valid is True
    assert out.label in ("positive", "negative") and out.text == out.label
    assert out.probs is not None and out.probs.shape == (2,)
    assert out.probs.sum() == pytest.approx(1.0)
    assert out.confidence == pytest.approx(out.probs.max())
    assert 0.0 < out.extra["label_mass"] <= 1.0
    hidden = out.lm.hidden
    assert hidden is not None and hidden.shape == (small.n_embd,) == (576,)
    assert np.isfinite(hidden).all() and np.abs(hidden).sum() > 0
    other = await level.predict(query(task, "a dull and boring film"))
    assert not np.allclose(other.lm.hidden, hidden)  # the state of this input, not a constant
    # the reused KV prefix must not change the answer for the same prompt
    again = await level.predict(query(task, "a warm and wonderful film"))
    np.testing.assert_allclose(again.probs, out.probs, atol=1e-5)


async def test_local_lm_answer_outside_labels_is_invalid(small) -> None:
    level = local_lm(ZOO, small)
    out = await level.predict(query(ZOO, "What is the capital of France?"))
    assert out.valid is False
    assert out.label is None and out.confidence == 0.0
    assert out.text and level.matcher.match_text(out.text) is None


async def test_local_lm_generate(small) -> None:
    level = local_lm(CHAT, small)
    out = await level.predict(query(CHAT, "What is the capital of France?"))
    lm = out.lm
    assert out.valid and out.label is None
    assert out.text.strip() and out.text == lm.text
    n = len(lm.token_logprobs)
    assert 1 <= n <= CHAT.max_tokens
    if lm.finish_reason == "length":
        assert n == CHAT.max_tokens
    assert all(lp <= 0.0 for lp in lm.token_logprobs)
    assert lm.entropies is not None and len(lm.entropies) == n
    assert all(0.0 <= e <= math.log(20) + 1e-6 for e in lm.entropies)  # top-20 entropy
    assert out.confidence == pytest.approx(sequence_confidence(lm.token_logprobs))
    assert 0.0 < out.confidence <= 1.0
    again = await level.predict(query(CHAT, "What is the capital of France?"))
    assert again.text == out.text  # greedy decoding is deterministic
    np.testing.assert_allclose(again.lm.token_logprobs, lm.token_logprobs, atol=1e-4)


# ------------------------------------------------------------------ openai (llama.cpp server)


@pytest.fixture
async def smol_http(smol_server: LocalLLMServer):
    backend = OpenAIBackend(smol_server.base_url, "smol", timeout_s=120, max_retries=1)
    yield backend
    await backend.aclose()


def openai_level(task: TaskConfig, backend: OpenAIBackend) -> OpenAILevel:
    return OpenAILevel(LARGE, task, backend)


async def test_openai_classify(smol_http: OpenAIBackend) -> None:
    task = classify_task(["positive", "negative"])
    out = await openai_level(task, smol_http).predict(query(task, "a warm and wonderful film"))
    assert out.valid is True
    assert out.label in ("positive", "negative")
    assert out.probs is not None and out.probs.sum() == pytest.approx(1.0)
    assert out.confidence == pytest.approx(out.probs.max())
    lm = out.lm
    assert lm.top_logprobs and len(lm.top_logprobs[0]) > 1  # read from top_logprobs
    assert 0.0 < lm.label_mass <= 1.0 + 1e-9
    assert out.extra["label_mass"] == pytest.approx(lm.label_mass)


async def test_openai_answer_outside_labels_is_invalid(smol_http: OpenAIBackend) -> None:
    level = openai_level(ZOO, smol_http)
    out = await level.predict(query(ZOO, "What is the capital of France?"))
    assert out.valid is False
    assert out.label is None and out.probs is None
    assert level.matcher.match_text(out.text) is None


async def test_openai_generate(smol_http: OpenAIBackend) -> None:
    level = openai_level(CHAT, smol_http)
    q = query(CHAT, "What is the capital of France?")
    plain = await level.predict(q)  # a final answer nobody reads log-probs of: none asked
    assert plain.text.strip() and plain.lm is not None and not plain.lm.has_logprobs
    q.want_logprobs = True  # a client asked for them
    out = await level.predict(q)
    lm = out.lm
    assert out.text.strip() == plain.text.strip()
    assert lm.has_logprobs and out.extra["has_logprobs"] == 1.0
    assert 1 <= len(lm.token_logprobs) <= CHAT.max_tokens
    assert all(lp <= 0.0 for lp in lm.token_logprobs)
    assert lm.top_logprobs is not None and len(lm.top_logprobs) == len(lm.token_logprobs)
    assert lm.entropies is not None and all(e >= 0 for e in lm.entropies)
    assert out.confidence == pytest.approx(sequence_confidence(lm.token_logprobs))
