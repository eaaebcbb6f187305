"""A cheap level that cannot answer yet (its operating point has not shown its target) runs on
its learning sample, and that sample explores that level only: the levels after it keep the
request's own exploration coin and go on answering. Before, a young first level marked every
request it ran on as exploring, so a fresh classify cascade sent all of its traffic to the
large LM until its cheapest level could answer (bench stream, Rotten Tomatoes: 100% large-LM
share over the first 300 items, 64.7% after the fix).

Real parts: the app over httpx's ASGI transport, SmolLM2 in-process and behind llama.cpp's
server, the logistic level's real policy.
"""

from __future__ import annotations

from pathlib import Path

from cascade.llm_server import LocalLLMServer
from tests.learning_helpers import (
    TASK,
    ask,
    gw,
    learn_config,
    learning_app,
    sentiment_task,
    stream,
)


def tasks() -> dict:
    return {
        TASK: sentiment_task(
            [
                {  # young: no samples, so it cannot answer; no exploration coin of its own
                    "name": "logistic",
                    "kind": "logistic",
                    "cost": 0.0001,
                    "policy": {
                        "kind": "threshold",
                        "target_agreement": 0.97,
                        "beta": 0.0,
                        "explore_floor": 0.0,
                    },
                },
                {  # answers whatever it is asked
                    "name": "small",
                    "kind": "local_lm",
                    "backend": "small",
                    "cost": 0.3,
                    "policy": {"kind": "threshold", "threshold": 0.0},
                },
                {"name": "large", "kind": "openai", "backend": "large", "cost": 1.0},
            ]
        )
    }


async def test_a_young_level_explores_itself_only(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    config = learn_config(tmp_path / "config.yaml", smol_server.base_url, tasks=tasks())
    async with learning_app(tmp_path, shared_backends, config, CASCADE_LEARNER=False) as client:
        rt = gw(client).cascade.task(TASK)
        assert rt.policies[0] is not None and rt.policies[0].cannot_answer
        for text, _ in stream(4):
            out = await ask(client, text)
            levels = {t["name"]: t for t in out["levels"]}
            assert levels["logistic"]["answered"] is False  # ran, deferred: it cannot answer
            assert out["level"] == "small", out  # the next level still answers
            assert levels["small"]["answered"] is True and "large" not in levels
