"""The generative cascade in the running gateway: the small LM's own hidden states reach the
learned rule, a level that cannot answer yet runs on a learning sample only, and an early abort
stops the small LM and sends the request on without learning from the unfinished answer.

Real parts throughout: SmolLM2 in-process as the small LM and behind llama.cpp's server as the
large LM, the real app and learner over HTTP (httpx against the ASGI app).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cascade.llm_server import LocalLLMServer
from tests.learning_helpers import ask, gw, latest, learn_config, learned, learning_app

QUESTIONS = [
    "What is the capital of France?",
    "What colour is the sky?",
    "How many legs does a cat have?",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What do bees make?",
    "Where is the Eiffel Tower?",
    "What is frozen water called?",
    "Which animal barks?",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "What do cows drink?",
]


def chat_task(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "chat": {
            "kind": "generate",
            "max_tokens": 6,
            "prompt": {"system": "Answer in a few words.", "user": "{input}"},
            "quality": {"measure": "token_f1", "threshold": 0.5},
            "levels": [
                {
                    "name": "small",
                    "kind": "local_lm",
                    "backend": "small",
                    "cost": 0.3,
                    "params": {"embed": "minilm"},
                    "policy": policy,
                },
                {"name": "large", "kind": "openai", "backend": "large", "cost": 1.0},
            ],
        }
    }


def config_with_encoder(path: Path, large_url: str, policy: dict[str, Any]) -> Path:
    """The learning tests' configuration with MiniLM beside the LMs (the prompt embedding)."""
    learn_config(path, large_url, tasks=chat_task(policy))
    data = yaml.safe_load(path.read_text())
    data["backends"]["minilm"] = {"kind": "encoder", "model": "all-MiniLM-L6-v2"}
    path.write_text(yaml.safe_dump(data))
    return path


HIDDEN_POLICY = {
    "kind": "posthoc_hidden",
    "target_agreement": 0.9,
    "learn_share": 0.5,
    "min_examples": 4,
    "refit_every": 2,
    "early_abort": {"every": 2, "confidence": 0.9, "min_examples": 2, "refit_every": 1},
}


@pytest.mark.slow  # a dozen generations by two LMs, and learning rounds
async def test_hidden_states_learning_sample_and_versions(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    config = config_with_encoder(tmp_path / "c.yaml", smol_server.base_url, HIDDEN_POLICY)
    async with learning_app(tmp_path, shared_backends, config) as client:
        ran = 0
        for q in QUESTIONS:
            body = await ask(client, q, task="chat")
            # the policy cannot show 0.9 yet: everything is answered by the large LM
            assert body["level"] == "large"
            names = [lv["name"] for lv in body["levels"]]
            if "small" not in names:
                continue  # outside the learning sample: straight to the large LM
            ran += 1
            rec = await gw(client).store.get_record(f"req:{body['request_id']}")
            assert rec is not None
            small = rec["levels"]["small"]
            # the small LM's own states travel with the demonstration
            assert small["hidden"] and small["hidden_gen"]
            assert small["decision"]["explored"] is True  # a learning sample is uniform
        skipped = len(QUESTIONS) - ran
        assert ran >= 2 and skipped >= 2, (ran, skipped)  # learn_share 0.5 of 12
        counts = (await client.get("/admin/stats")).json()["tasks"]["chat"]["levels"]["small"]
        assert counts["skipped"] == skipped

        await learned(client, len(QUESTIONS), task="chat")  # every large answer is one
        _, state = await latest(gw(client).store, "chat")
        assert state is not None
        pol = state.policies["small"]
        # the rule saw the hidden states: its coefficients span token features, the MiniLM-free
        # inputs and both hidden vectors; it published its operating window with fold ids
        n_embd = gw(client).cascade.task("chat").levels[0].backend.n_embd  # type: ignore[attr-defined]
        width = 16 + 384 + 2 * n_embd  # token features, MiniLM, both hidden states
        if "coef" in pol:
            assert pol["coef"].shape[0] == width
        assert pol["op_x"].shape[1] == width + 1  # and the fold each sample was learned in


@pytest.mark.slow
async def test_early_abort_stops_the_small_lm_and_learns_nothing_from_it(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    policy = {**HIDDEN_POLICY, "learn_share": 1.0, "explore_floor": 0.0, "beta": 0.0}
    config = config_with_encoder(tmp_path / "c.yaml", smol_server.base_url, policy)
    async with learning_app(tmp_path, shared_backends, config, CASCADE_LEARNER=False) as client:
        rt = gw(client).cascade.task("chat")
        pol = rt.policies[0]
        assert pol is not None and pol.abort is not None and pol.op is not None
        # a rule that can answer, and an abort head sure that whatever comes is deferred
        pol.op.threshold = 0.5
        width = 8 + 384 + rt.levels[0].backend.n_embd  # type: ignore[attr-defined]
        pol.abort.head.load_state({"coef": np.zeros(width), "intercept": np.array([10.0])})
        body = await ask(client, "What is the capital of France?", task="chat")
        assert body["level"] == "large"
        small = body["levels"][0]
        assert small["name"] == "small" and small["answered"] is False
        rec = await gw(client).store.get_record(f"req:{body['request_id']}")
        assert rec is not None
        s = rec["levels"]["small"]
        assert s["aborted"] is True and s["text"] == ""  # stopped at the prompt
        assert s["ready"] is False and "decision" not in s  # nothing to decide on or learn
        counts = (await client.get("/admin/stats")).json()["tasks"]["chat"]["levels"]["small"]
        assert counts["aborted"] == 1 and counts["deferred"] == 1
