"""params.fuse: the large LM's answer served fused with the small LM's zero-shot one, while the
demonstration (what the cascade learns from) stays the large LM's own answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cascade.backends.openai_http import OpenAIBackend
from cascade.fuse import fuse, zero_shot
from cascade.levels import LevelOutput
from cascade.llm_server import LocalLLMServer
from cascade.prompts import LabelMatcher, render_messages
from tests.api_helpers import gateway, task_stats
from tests.conftest import MODELS, REDIS_URL

LABELS = ["positive", "negative"]
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def out(name: str, probs: list[float], **extra: float) -> LevelOutput:
    """An LM's answer; ``label_mass`` marks a distribution read off log-probabilities."""
    p = np.array(probs)
    i = int(p.argmax())
    return LevelOutput(name, LABELS[i], LABELS[i], p, float(p[i]), extra=dict(extra))


def lm(name: str, probs: list[float], **extra: float) -> LevelOutput:
    return out(name, probs, label_mass=1.0, **extra)


def test_the_product_of_two_distributions_can_overrule_the_large_lm() -> None:
    large = lm("large", [0.55, 0.45])
    small = lm("small", [0.1, 0.9])  # confident the other way: 0.55*0.1 < 0.45*0.9
    served = fuse(large, [small], ["small"], LABELS)
    assert served.label == served.text == "negative"
    assert served.probs is not None
    assert served.probs[1] == pytest.approx(0.45 * 0.9 / (0.55 * 0.1 + 0.45 * 0.9))
    assert served.confidence == pytest.approx(served.probs[1])
    assert served.extra["fused"] == 1.0 and served.extra["large_agrees"] == 0.0
    assert large.label == "positive"  # the large LM's own answer is left as it was


def test_a_confident_large_lm_keeps_its_answer() -> None:
    large = lm("large", [0.95, 0.05])
    served = fuse(large, [lm("small", [0.3, 0.7])], ["small"], LABELS)
    assert served.label == "positive" and served.extra["large_agrees"] == 1.0


def test_the_small_lms_zero_shot_opinion_is_fused_not_its_probe_average() -> None:
    # a local LM with a probe serves the average of zero-shot and probe as ``probs`` and keeps
    # its own zero-shot distribution as zs_<label>: only that one is independent of the large LM
    small = lm("small", [0.9, 0.1], zs_positive=0.2, zs_negative=0.8)
    np.testing.assert_allclose(zero_shot(small, LABELS), [0.2, 0.8])
    served = fuse(lm("large", [0.6, 0.4]), [small], ["small"], LABELS)
    assert served.label == "negative"  # 0.6*0.2 < 0.4*0.8; with the average it would be positive


def test_an_lm_without_log_probabilities_takes_no_part() -> None:
    # an endpoint that returns no log-probabilities gives a one-hot "distribution"
    # (label_mass unset): fused, it would overrule any other opinion
    sure = lm("large", [0.999, 0.001])
    one_hot = out("small", [1e-6, 1 - 1e-6])
    assert fuse(sure, [one_hot], ["small"], LABELS) is sure
    blind = out("large", [1 - 1e-6, 1e-6])
    assert fuse(blind, [lm("small", [0.01, 0.99])], ["small"], LABELS) is blind


def test_nothing_to_fuse_serves_the_large_lms_answer_unchanged() -> None:
    large = lm("large", [0.55, 0.45])
    invalid = LevelOutput("small", "maybe", valid=False)
    untrained = LevelOutput("encoder", "", ready=False)
    assert fuse(large, [invalid, untrained], ["small", "encoder"], LABELS) is large
    assert fuse(large, [lm("other", [0.1, 0.9])], ["small"], LABELS) is large  # not named


# reviews SmolLM2 answers inside the label set (it starts others with "This"); on three of
# them Qwen2.5-0.5B's zero-shot answer is confident enough to overrule SmolLM2's
REVIEWS = [
    "a tedious, joyless slog with nothing to say",
    "not as bad as the trailer suggested, though hardly good",
    "ambitious and messy; it never quite comes together",
    "a modest pleasure, predictable yet oddly affecting",
    "the director's least interesting film, handsomely shot",
    "a beautiful disaster",
    "a film that mistakes noise for energy",
    "it grows on you",
]


def _use_qwen_as_small_and_fuse(data: dict[str, Any]) -> None:
    # the test configuration's two LMs are both SmolLM2, whose distributions multiply to the
    # same argmax: a different small LM is needed for the fused answer to ever differ
    data["backends"]["qwen"] = {"kind": "llama", "model": str(MODELS / QWEN), "n_ctx": 1024}
    levels = data["tasks"]["sentiment"]["levels"]
    levels[2]["backend"] = "qwen"
    levels[-1]["params"] = {"fuse": ["small"]}


@pytest.mark.slow  # loads Qwen2.5-1.5B as the small LM
async def test_the_gateway_serves_the_fused_answer_and_learns_the_large_lms_own(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    redis_client: redis.Redis,
    redis_prefix: str,
) -> None:
    if not (MODELS / QWEN).exists():
        pytest.fail(f"{MODELS / QWEN} is missing: run `make install` (it fetches the models)")
    prompt_cfg = None
    served: dict[str, str] = {}
    async with gateway(
        tmp_path,
        shared_backends,
        smol_server.base_url,
        redis_url=REDIS_URL,
        prefix=redis_prefix,
        edit=_use_qwen_as_small_and_fuse,
    ) as client:
        prompt_cfg = client.app.state.gateway.config.tasks["sentiment"].prompt  # type: ignore[attr-defined]
        for text in REVIEWS[2:]:
            r = await client.post("/generate", json={"task": "sentiment", "input": text})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["level"] == "large" and body["degraded"] is False, json.dumps(body)
            assert body["output"] == body["label"]
            served[text] = body["label"]
        # the OpenAI-style route, with token log-probabilities, plain and streamed: they must
        # describe the answer served, not the one the large LM picked before fusion
        for text, stream in ((REVIEWS[0], False), (REVIEWS[1], True)):
            chat = {
                "model": "cascade/sentiment",
                "messages": [{"role": "user", "content": text}],
                "logprobs": True,
                "top_logprobs": 2,
                "stream": stream,
            }
            r = await client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            if stream:
                events = [
                    json.loads(line[6:])
                    for line in r.text.splitlines()
                    if line.startswith("data: {")
                ]
                content = "".join(
                    e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
                )
                lps = [
                    e["choices"][0]["logprobs"]
                    for e in events
                    if e["choices"] and e["choices"][0].get("logprobs")
                ]
                assert len(lps) == 1, events
                lp = lps[0]
            else:
                choice = r.json()["choices"][0]
                content, lp = choice["message"]["content"], choice["logprobs"]
            assert r.headers["x-cascade-level"] == "large"
            served[text] = content
            (tok,) = lp["content"]
            assert tok["token"] == content
            best = max(tok["top_logprobs"], key=lambda t: t["logprob"])
            assert best["token"] == content and best["logprob"] == pytest.approx(tok["logprob"])
        again = await client.post("/generate", json={"task": "sentiment", "input": REVIEWS[1]})
        assert again.json()["cached"] is True and again.json()["label"] == served[REVIEWS[1]]
        s = await task_stats(client, "sentiment")
    # the large LM's own distribution, asked directly over HTTP
    large = OpenAIBackend(smol_server.base_url, "smol")
    matcher = LabelMatcher(LABELS)
    demos = [
        json.loads(fields[b"d"])
        for _, fields in redis_client.xrange(f"{redis_prefix}:demos:sentiment")
    ]
    assert len(demos) == len(REVIEWS)  # one per large-LM answer; the cached repeat adds none
    changed = 0
    for demo in demos:
        r = await large.classify(render_messages(prompt_cfg, demo["input"]), matcher)
        assert r.label_probs is not None
        own = max(LABELS, key=lambda lab: r.label_probs[lab])  # type: ignore[index]
        assert demo["label"] == own  # the demonstration is the large LM's own answer
        extra = demo["levels"]["small"]["features"]["extra"]
        zs = np.array([extra[f"zs_{lab}"] for lab in LABELS])
        pl = np.clip(np.array([r.label_probs[lab] for lab in LABELS]), 1e-6, 1 - 1e-6)
        product = np.log(pl / pl.sum()) + np.log(zs)
        assert served[demo["input"]] == LABELS[int(product.argmax())], demo["input"]
        changed += served[demo["input"]] != own
    await large.aclose()
    assert changed >= 1, "no review where the two LMs disagree enough: pick other reviews"
    assert s["fused"] == len(REVIEWS) and s["fused_changed"] == changed
    assert s["demonstrations"] == len(REVIEWS)
    # agreement is still counted against the large LM's own answers
    small = s["levels"]["small"]["agreement_with_large"]
    agree = sum(d["levels"]["small"]["label"] == d["label"] for d in demos)
    assert small["n"] == len(REVIEWS) and small["rate"] == pytest.approx(agree / len(REVIEWS))


def test_bench_stream_can_measure_a_fusing_task_without_fusing() -> None:
    from bench.streams import without_fuse
    from cascade.config import load_config
    from tests.conftest import ROOT

    task = load_config(ROOT / "deploy" / "config.yaml", env={}).tasks["sentiment"]
    assert task.fuse_names() == ["small"]  # the default sentiment cascade fuses
    plain = without_fuse(task)
    assert plain.fuse_names() == [] and task.fuse_names() == ["small"]
    assert [lv.name for lv in plain.levels] == [lv.name for lv in task.levels]
    assert plain.levels[-1].cost == task.levels[-1].cost and plain.labels == task.labels


def test_no_fuse_on_the_command_line_reaches_the_benchmark() -> None:
    import argparse

    from bench.cli import add_bench_commands, stream_args

    parser = argparse.ArgumentParser()
    add_bench_commands(parser.add_subparsers(dest="cmd"))
    line = ["bench", "stream", "--stream", "trec", "--limit", "5"]
    assert stream_args(parser.parse_args(line)).fuse is True
    assert stream_args(parser.parse_args([*line, "--no-fuse"])).fuse is False
