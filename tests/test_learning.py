"""Online learning end to end: the real app with its learner, SmolLM2 over HTTP as the large LM,
real Redis (shared and private) or the embedded store. Demonstrations go in; versions of the
levels and policies come out, are hot-loaded, survive restarts and Redis outages, and make the
gateway call the large LM less."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cascade.llm_server import LocalLLMServer
from cascade.quality import token_f1
from cascade.versions import load_state
from policies import Features
from tests.conftest import RedisServer
from tests.learning_helpers import (
    FIXED,
    NEGATIVE,
    POSITIVE,
    TASK,
    TEMPLATES,
    ask,
    eventually,
    gw,
    latest,
    learn_config,
    learned,
    learning_app,
    logistic,
    send,
    stats,
    stream,
)

# hold 90% agreement with the large LM; beta 0.98 (default 0.99) so a short stream sees the
# exploration share fall, yet collects the 30 explored samples the operating point needs first
TARGET = {"kind": "threshold", "target_agreement": 0.9, "beta": 0.98}
NEVER = {"kind": "threshold", "threshold": 1.0}  # the logistic level (all but) never answers


@pytest.mark.slow  # dozens of large-LM demonstrations, then retraining
async def test_levels_and_policies_change_after_demonstrations(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=TARGET)
    async with learning_app(tmp_path, shared_backends, config) as client:
        assert (await stats(client))["tasks"][TASK]["version"] == 0
        level, policy = logistic(client), gw(client).cascade.task(TASK).policies[0]
        assert level.proba_text(FIXED) is None  # nothing learned yet: not ready
        assert policy is not None and policy.explorer is not None and policy.op is not None
        for _, text in stream(4):
            body = await ask(client, text)
            assert body["level"] == "large" and body["levels"][0]["ready"] is False
        v1 = await learned(client, 4)
        assert v1 >= 1
        assert (await stats(client))["tasks"][TASK]["version"] == v1
        p1 = level.proba_text(FIXED)
        assert p1 is not None and p1.sum() == pytest.approx(1.0)
        assert policy.explorer.seen == 0  # the level had nothing to say on those four

        for _, text in stream(4, start=4):
            body = await ask(client, text)
            assert body["levels"][0]["ready"] is True  # the hot-loaded version answers now
        v2 = await learned(client, 8)
        s = (await stats(client))["tasks"][TASK]
        assert v2 > v1 and s["version"] == v2
        p2 = level.proba_text(FIXED)
        assert p2 is not None and not np.allclose(p1, p2)
        # the policy learned from the four where the level had answered: counted, and the
        # explored ones kept as the operating point's evidence
        assert policy.explorer.seen == 4
        assert 0 < len(policy.op.samples) <= 4
        view = s["levels"]["logistic"]["policy"]
        assert view["explore_probability"] == pytest.approx(0.98**4)
        # exploration decays with the items the serving process decided on, too
        assert policy.explorer.traffic == 4


@pytest.mark.slow  # a long stream through the learner
async def test_warmup_sends_the_first_items_on_as_uniform_samples(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    """With warmup n, the first n items the level could answer all reach the large LM as
    exploration samples (at beta 0.5 alone, six in a row would be a 1-in-30,000 chance); then
    exploration is what it would have been, and the operating point starts from n samples."""
    policy = {**TARGET, "beta": 0.5, "warmup": 6}
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=policy)
    async with learning_app(tmp_path, shared_backends, config) as client:
        pol = gw(client).cascade.task(TASK).policies[0]
        assert pol is not None and pol.explorer is not None and pol.op is not None
        await learned(client, await send(client, [t for _, t in stream(4)]))  # not ready yet
        for _, text in stream(6, start=4):
            body = await ask(client, text)
            assert body["level"] == "large" and body["levels"][0]["ready"] is True
        await learned(client, 10)
        view = (await stats(client))["tasks"][TASK]["levels"]["logistic"]
        assert view["policy"]["warmup"] == 6
        assert view["policy"]["explore_probability"] == pytest.approx(0.5**6)
        assert pol.explorer.seen == 6 and len(pol.op.samples) == 6


@pytest.mark.slow  # the longest stream: minutes of large-LM answers
async def test_deferral_rate_falls_on_an_easy_stream(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    n = 120
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=TARGET)
    async with learning_app(tmp_path, shared_backends, config) as client:
        answers = []  # (template, level, label)
        for template, text in stream(n):
            body = await ask(client, text)
            answers.append((template, body["level"], body["label"]))
        s = (await stats(client))["tasks"][TASK]

    # the premise: the large LM labels each template one way, and the two differently
    said = {t: {lab for tt, lvl, lab in answers if tt == t and lvl == "large"} for t in TEMPLATES}
    assert all(len(labels) == 1 for labels in said.values()), said
    truth = {t: labels.pop() for t, labels in said.items()}
    assert truth[POSITIVE] != truth[NEGATIVE]

    def large_share(part: list[tuple[str, str, Any]]) -> float:
        return sum(lvl == "large" for _, lvl, _ in part) / len(part)

    q = n // 4
    first, last = large_share(answers[:q]), large_share(answers[-q:])
    assert first >= 0.9, answers[:q]
    assert last <= 0.6 and first - last >= 0.4, (first, last)
    # what the logistic level answered, it answered right
    cheap = [(t, lab) for t, lvl, lab in answers if lvl == "logistic"]
    assert cheap and all(lab == truth[t] for t, lab in cheap)
    assert s["levels"]["logistic"]["answered"] == len(cheap)
    assert s["large_llm_calls"] == n - len(cheap)
    # the serving process reports the policy's agreement estimate with its 95% interval
    est = s["levels"]["logistic"]["policy"]["agreement_estimate"]
    assert est["n"] >= 30, est
    assert est["agreement"] >= 0.9
    assert est["ci95_low"] <= est["agreement"] <= est["ci95_high"] <= 1.0


@pytest.mark.slow  # two gateways and two learning rounds
async def test_versions_hot_reload_across_gateways(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, redis_settings: dict
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=NEVER)
    env = redis_settings
    async with (
        learning_app(tmp_path / "a", shared_backends, config, **env) as a,
        learning_app(tmp_path / "b", shared_backends, config, CASCADE_LEARNER=False, **env) as b,
    ):
        assert gw(a).learner is not None and gw(b).learner is None

        async def b_serves(version: int) -> bool:
            return bool((await stats(b))["tasks"][TASK]["version"] == version)

        demos = await send(a, [t for _, t in stream(4)])
        assert demos == 4  # nothing learned yet: all four went to the large LM
        v1 = await learned(a, demos)
        await eventually(lambda: b_serves(v1), 5, f"gateway b to serve version {v1}")
        np.testing.assert_array_equal(logistic(b).proba_text(FIXED), logistic(a).proba_text(FIXED))

        # b's demonstrations reach a's learner through Redis too
        demos += await send(b, [t for _, t in stream(4, start=4)])
        v2 = await learned(a, demos)
        assert v2 > v1
        await eventually(lambda: b_serves(v2), 5, f"gateway b to serve version {v2}")
        np.testing.assert_array_equal(logistic(b).proba_text(FIXED), logistic(a).proba_text(FIXED))


@pytest.mark.slow  # two gateways and a learning round
async def test_exploration_decays_with_every_gateways_traffic(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, redis_settings: dict
) -> None:
    """Items one gateway decided on count for another's exploration (through the shared
    counters): a new replica does not explore as if the level were new."""
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=TARGET)
    env = redis_settings
    async with (
        learning_app(tmp_path / "a", shared_backends, config, **env) as a,
        learning_app(tmp_path / "b", shared_backends, config, CASCADE_LEARNER=False, **env) as b,
    ):
        pa = gw(a).cascade.task(TASK).policies[0]
        pb = gw(b).cascade.task(TASK).policies[0]
        assert pa is not None and pb is not None and pa.explorer and pb.explorer
        v1 = await learned(a, await send(a, [t for _, t in stream(4)]))
        assert v1 >= 1 and pa.explorer.traffic == 0  # the level was not ready: no decisions
        await send(a, [t for _, t in stream(6, start=4)])  # the level decides on these six
        assert pa.explorer.traffic == 6

        async def b_counts_them() -> bool:
            return pb.explorer is not None and pb.explorer.traffic == 6

        await eventually(b_counts_them, 5, "gateway b to count gateway a's six decisions")
        assert pb.explore_probability <= 0.98**6


async def test_restart_resumes_the_learned_version(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, store_settings: dict
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=NEVER)
    env = store_settings
    async with learning_app(tmp_path, shared_backends, config, **env) as client:
        assert await send(client, [t for _, t in stream(4)]) == 4
        v1 = await learned(client, 4)
        _, state1 = await latest(gw(client).store)
        p1 = logistic(client).proba_text(FIXED)
    assert state1 is not None and p1 is not None

    async with learning_app(tmp_path, shared_backends, config, **env) as client:
        # served from the first request on, with the same parameters
        assert gw(client).cascade.task(TASK).version == v1
        assert (await stats(client))["tasks"][TASK]["version"] == v1
        np.testing.assert_allclose(logistic(client).proba_text(FIXED), p1, rtol=1e-6)
        learner = gw(client).learner
        assert learner is not None
        await eventually(lambda: learner.published.get(TASK) == v1, 20, "the learner to resume")
        tl = learner.learners[TASK]
        assert tl.demos == 4 and tl.applied_id == state1.applied_id

        demos = 4 + await send(client, [t for _, t in stream(4, start=4)])
        assert demos > 4
        v2 = await learned(client, demos)  # nothing applied twice, nothing skipped
        first_new = await gw(client).store.get_version(TASK, v1 + 1)
        assert v2 > v1 and first_new is not None
        assert 4 < load_state(first_new).demos <= demos
        assert tl.demos == demos
        assert not np.allclose(logistic(client).proba_text(FIXED), p1)


@pytest.mark.slow  # a private Redis, stopped and restarted
async def test_no_demonstration_lost_when_redis_restarts(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, private_redis: RedisServer
) -> None:
    prefix = "cglearn"
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, policy=NEVER)
    env = {"REDIS_URL": private_redis.url, "CASCADE_REDIS_PREFIX": prefix}
    texts = [t for _, t in stream(8)]
    async with learning_app(tmp_path, shared_backends, config, **env) as client:
        store = gw(client).store
        for text in texts[:4]:
            assert (await ask(client, text))["level"] == "large"
        await learned(client, 4)

        private_redis.stop()
        for text in texts[4:]:  # still answered by the large LM; demonstrations wait
            body = await ask(client, text)
            assert body["level"] == "large" and body["degraded"] is False
        assert store.demos_buffered == 4
        assert list((tmp_path / "data" / "outbox").glob("outbox-*.jsonl"))  # and on disk

        private_redis.start()  # same port, same AOF
        await learned(client, 8)
        assert store.demos_dropped == 0 and store.demos_buffered == 0
        s = await stats(client)
        assert s["demonstrations_dropped"] == 0 and s["demonstrations_buffered"] == 0
        t = s["tasks"][TASK]
        assert t["demonstrations"] == t["large_llm_calls"] == 8
        assert t["learner_lag"] == 0
    r = redis.Redis(port=private_redis.port)
    try:
        assert r.xlen(f"{prefix}:demos:{TASK}") == 8
        assert r.xpending(f"{prefix}:demos:{TASK}", "learners")["pending"] == 0
    finally:
        r.close()


async def test_feedback_corrects_and_teaches(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, batch=1)
    async with learning_app(tmp_path, shared_backends, config) as client:
        body = await ask(client, FIXED, cache=True)
        assert body["level"] == "large" and body["cached"] is False
        await learned(client, 1)
        labels = gw(client).cascade.task(TASK).config.labels
        other = next(lab for lab in labels if lab != body["label"])
        before = logistic(client).proba_text(FIXED)
        assert before is not None

        async def feedback(**fields: Any) -> Any:
            return await client.post("/feedback", json=fields)

        r = await feedback(request_id=uuid.uuid4().hex, label=other)
        assert r.status_code == 404, r.text
        r = await feedback(request_id=body["request_id"], label="neutral")
        assert r.status_code == 422 and "neutral" in r.json()["detail"]
        r = await feedback(request_id=body["request_id"])
        assert r.status_code == 422 and "label" in r.json()["detail"]
        r = await feedback(request_id=body["request_id"], label=other)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": True, "request_id": body["request_id"], "task": TASK}

        # the corrected answer is what the cache serves for that input from now on
        hit = await ask(client, FIXED, cache=True)
        assert hit["cached"] is True
        assert (hit["label"], hit["output"], hit["level"]) == (other, other, "feedback")

        await learned(client, 2)  # the large LM's demonstration, then the correction
        after = logistic(client).proba_text(FIXED)
        assert after is not None
        i = labels.index(other)
        assert after[i] > before[i]


GENERATE = {
    "chat": {
        "kind": "generate",
        "max_tokens": 4,
        "prompt": {"system": "Answer in a few words.", "user": "{input}"},
        "quality": {"measure": "token_f1", "threshold": 0.5},
        "levels": [
            {
                "name": "router",
                "kind": "router",
                "cost": 0.0001,
                "params": {"batch_size": 3},
                "policy": {"kind": "threshold", "threshold": 0.0},  # never skips the small LM
            },
            {
                "name": "small",
                "kind": "local_lm",
                "backend": "small",
                "cost": 0.1,
                # threshold 0: always defers, so every request becomes a demonstration
                "policy": {
                    "kind": "posthoc_quantile",
                    "threshold": 0.0,
                    "min_examples": 4,
                    "refit_every": 2,
                },
            },
            {"name": "large", "kind": "openai", "backend": "large", "cost": 1.0},
        ],
    }
}
QUESTIONS = [
    "What is the capital of France?",
    "What colour is the sky?",
    "How many legs does a cat have?",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What do bees make?",
]


@pytest.mark.slow  # learning rounds on generated text
async def test_generate_router_and_posthoc_policy_learn(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, tasks=GENERATE)
    async with learning_app(tmp_path, shared_backends, config) as client:
        rt = gw(client).cascade.task("chat")
        router, policy = rt.levels[0], rt.policies[1]
        probe_x = router._x(["What is the capital of Italy?"], [None])  # type: ignore[attr-defined]
        probe_f = Features(0.5, token_logprobs=np.array([-0.1, -2.0]), entropies=np.array([0.3, 1]))
        assert router.p_accept(probe_x) is None  # type: ignore[attr-defined]
        assert policy is not None and policy.score(probe_f) == 0.5  # the prior

        ids = []
        for i, question in enumerate(QUESTIONS):
            # greedy answers of the same model mostly match; hot ones mostly do not
            body = await ask(client, question, task="chat", temperature=0.0 if i % 2 else 1.5)
            assert body["level"] == "large"
            ids.append(body["request_id"])
        # whether each small answer is acceptable, by hand from what the two LMs said
        verdicts = []
        for rid in ids:
            rec = await gw(client).store.get_record(f"req:{rid}")
            assert rec is not None
            small = rec["levels"]["small"]
            assert small["features"]["token_logprobs"]  # the policy's evidence was recorded
            verdicts.append(token_f1(small["text"], rec["answer"]["output"]) >= 0.5)
        assert 0 < sum(verdicts) < len(verdicts), verdicts  # both kinds in the stream

        number = await learned(client, len(QUESTIONS), task="chat")
        agreement = (await stats(client))["tasks"]["chat"]["levels"]["small"]
        assert agreement["agreement_with_large"]["n"] == len(QUESTIONS)
        assert agreement["agreement_with_large"]["rate"] == pytest.approx(
            sum(verdicts) / len(verdicts), abs=1e-4
        )
        _, state = await latest(gw(client).store, "chat")
        assert state is not None and number >= 1
        assert "coef" in state.levels["router"] and "coef" in state.policies["small"]
        # the serving copies learned: the router predicts, the policy's score moved
        p = router.p_accept(probe_x)  # type: ignore[attr-defined]
        assert p is not None and 0.0 < p < 1.0
        assert router.updates >= 1
        assert policy.score(probe_f) != pytest.approx(0.5, abs=1e-6)
