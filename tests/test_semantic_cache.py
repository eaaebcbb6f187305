"""The semantic cache end to end: real app, real store (embedded and Redis), MiniLM embeddings,
SmolLM2 behind llama.cpp's server as the large LM; API keys made with the real CLI, replicas
sharing one Redis, and a private Redis killed under a running gateway."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cascade.config import ConfigError, load_config
from cascade.llm_server import LocalLLMServer
from tests.api_helpers import edit_config, gateway, task_stats, wait_for_stats
from tests.conftest import REDIS_URL, RedisServer, write_config
from tests.test_auth import bearer, create_key

TASK = "sentiment"
FIRST = "a warm film"
NEAR = "A warm film!"  # another byte string (an exact-cache miss), the same request in effect
FAR = "the plot of this documentary covers tax law in detail"
LABELS = ["positive", "negative"]


def semantic(*, task: str = TASK, shared: bool = False, **cfg: Any) -> Any:
    """Config edit: ``task`` answered by the large LM alone, with a semantic cache (and with
    ``shared``, one cache scope for every API key: ``shared_cache``)."""

    def edit(data: dict[str, Any]) -> None:
        t = data["tasks"][task]
        t["levels"] = [t["levels"][-1]]
        t["semantic_cache"] = {"encoder": "minilm", **cfg}
        if shared:
            t["shared_cache"] = True

    return edit


async def ask(
    client: Any, text: str, headers: dict[str, str] | None = None, **kw: Any
) -> dict[str, Any]:
    r = await client.post("/generate", json={"task": TASK, "input": text, **kw}, headers=headers)
    assert r.status_code == 200, r.text
    return {**r.json(), "_headers": dict(r.headers)}


def tenants(tmp_path: Path, store_settings: dict[str, object]) -> tuple[dict, dict]:
    """Two API keys (tenants A and B), made by the CLI in the store the gateway will use
    (``gateway(tmp_path, ...)`` keeps its embedded store under ``tmp_path / "data"``)."""
    env = {k: str(v) for k, v in store_settings.items()} or {
        "CASCADE_DATA_DIR": str(tmp_path / "data")
    }
    return bearer(create_key("tenant-a", **env)[0]), bearer(create_key("tenant-b", **env)[0])


def is_hit(answer: dict[str, Any], of: dict[str, Any]) -> bool:
    """``answer`` is a semantic hit that served ``of``'s answer."""
    return (
        answer["cached"] is True
        and answer["cache"] == "semantic"
        and (answer["label"], answer["output"]) == (of["label"], of["output"])
    )


def is_miss(answer: dict[str, Any]) -> bool:
    """``answer`` came from the large LM itself, no cache."""
    return answer["cached"] is False and answer["cache"] is None and answer["level"] == "large"


async def test_a_fixed_threshold_serves_near_repeats(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    edit = semantic(fixed_threshold=0.8)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        first = await ask(client, FIRST)
        assert first["cached"] is False and first["cache"] is None and first["level"] == "large"
        near = await ask(client, NEAR)
        assert near["cached"] is True and near["cache"] == "semantic"
        assert near["similarity"] >= 0.8 and near["cost"] == 0.0
        assert (near["label"], near["output"]) == (first["label"], first["output"])
        assert near["_headers"]["x-cascade-cache"] == "semantic"
        assert float(near["_headers"]["x-cascade-similarity"]) == pytest.approx(
            near["similarity"], abs=1e-4
        )
        exact = await ask(client, FIRST)
        assert exact["cache"] == "exact" and "x-cascade-similarity" not in exact["_headers"]
        far = await ask(client, FAR)
        assert far["cached"] is False and far["level"] == "large"
        stats = await wait_for_stats(client, TASK, lambda t: t["semantic_cache"]["hits"] >= 1)
        sem = stats["semantic_cache"]
        assert sem["hits"] == 1 and sem["cost_saved"] == pytest.approx(1.0)
        assert sem["gate"]["fixed_threshold"] == 0.8 and sem["gate"]["entries"] == 2
        assert stats["cache_hits"] == 2
        metrics = (await client.get("/metrics")).text
        assert 'cascade_semantic_hits_total{task="sentiment"} 1.0' in metrics


VARIANTS = [FIRST, NEAR, "a warm film.", "A WARM FILM", "a warm film!!", "a warm, warm film"]
LEARN_FAST = {"target_agreement": 0.6, "min_samples": 3, "z": 0.5, "verify_share": 0.0}


async def test_the_learned_gate_serves_only_once_agreement_is_shown(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer
) -> None:
    """Until enough comparisons show the target, near-repeats go to the large LM (each one a
    comparison); then they are hits."""
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=semantic(**LEARN_FAST)
    ) as client:
        answers = [await ask(client, v) for v in VARIANTS]
        served = [a for a in answers if a["cache"] == "semantic"]
        first_hit = next(i for i, a in enumerate(answers) if a["cache"] == "semantic")
        assert first_hit >= 4  # at least three comparisons before any hit
        assert all(a["label"] == answers[0]["label"] for a in served)
        stats = await task_stats(client, TASK)
        sem = stats["semantic_cache"]
        gate = sem["gate"]
        assert gate["threshold"] is not None and gate["target_agreement"] == 0.6
        assert gate["comparisons"] >= 3 and gate["ci95"][0] <= gate["agreement"] <= 1.0
        assert sem["comparisons"] == gate["window"] == first_hit - 1
        assert gate["unverified_hits"] == len(served)  # served hits are weighed, not compared
        assert set(gate["weights"]) >= {"similarity", "record", "support"}


async def test_a_replica_learns_from_the_comparisons_another_made(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, redis_prefix: str
) -> None:
    """Comparisons go to a shared log: a gateway that made none serves once another's
    comparisons have shown the target."""
    kw: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "prefix": redis_prefix,
        "edit": semantic(**LEARN_FAST),
    }
    url = smol_server.base_url
    async with (
        gateway(tmp_path / "one", shared_backends, url, **kw) as one,
        gateway(tmp_path / "two", shared_backends, url, **kw) as two,
    ):
        answers = []
        for v in VARIANTS[:-1]:  # until one's gate is open
            answers.append(await ask(one, v))
            if answers[-1]["cache"] == "semantic":
                break
        assert answers[-1]["cache"] == "semantic", answers
        made = (await task_stats(one, TASK))["semantic_cache"]["gate"]["window"]
        stats = await wait_for_stats(
            two, TASK, lambda t: t["semantic_cache"]["gate"]["window"] >= made, timeout_s=3.0
        )
        assert stats["semantic_cache"]["gate"]["threshold"] is not None
        near = await ask(two, VARIANTS[5])
        assert near["cache"] == "semantic" and near["label"] == answers[0]["label"]


async def test_a_tenant_never_gets_another_tenants_answers(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    """Without ``shared_cache`` a tenant searches its own partition only."""
    a, b = tenants(tmp_path, store_settings)
    edit = semantic(fixed_threshold=0.8)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        assert (
            await client.post("/generate", json={"task": TASK, "input": FIRST})
        ).status_code == 401
        first = await ask(client, FIRST, headers=a)
        assert is_miss(first)
        theirs = await ask(client, NEAR, headers=b)
        assert is_miss(theirs), theirs
        assert "x-cascade-similarity" not in theirs["_headers"]
        mine = await ask(client, NEAR, headers=a)
        assert is_hit(mine, first), mine
        assert mine["similarity"] >= 0.8


async def test_a_tenants_correction_never_reaches_another_tenant(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    """With ``shared_cache`` tenants share the large LM's answers; a ``/feedback`` correction
    stays in its tenant's own partition (a tenant cannot poison the others' answers)."""
    a, b = tenants(tmp_path, store_settings)
    edit = semantic(fixed_threshold=0.8, shared=True)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        first = await ask(client, FIRST, headers=a)
        assert is_miss(first) and first["label"] in LABELS
        wrong = next(label for label in LABELS if label != first["label"])
        fb = {"request_id": first["request_id"], "label": wrong}
        r = await client.post("/feedback", json=fb, headers=a)
        assert r.status_code == 200, r.text

        mine = await ask(client, NEAR, headers=a)
        assert mine["cache"] == "semantic", mine
        assert (mine["label"], mine["output"], mine["level"]) == (wrong, wrong, "feedback")

        theirs = await ask(client, NEAR, headers=b)
        assert is_hit(theirs, first), theirs  # the shared partition: the large LM's answer
        assert theirs["level"] == "large" and theirs["label"] != wrong
        exact = await ask(client, FIRST, headers=b)
        assert exact["cache"] == "exact" and exact["label"] == first["label"] != wrong


async def test_an_answer_cached_on_one_replica_is_a_hit_on_another(
    tmp_path: Path, shared_backends: dict, smol_server: LocalLLMServer, redis_prefix: str
) -> None:
    """Two gateways on one Redis: the log carries an entry to the other's index within a few
    version polls (CASCADE_VERSION_POLL_S is 0.2 s in tests)."""
    kw: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "prefix": redis_prefix,
        "edit": semantic(fixed_threshold=0.8),
    }
    url = smol_server.base_url
    async with (
        gateway(tmp_path / "one", shared_backends, url, **kw) as one,
        gateway(tmp_path / "two", shared_backends, url, **kw) as two,
    ):
        assert (await task_stats(two, TASK))["semantic_cache"]["gate"]["entries"] == 0
        first = await ask(one, FIRST)
        assert is_miss(first)
        t0 = time.monotonic()
        # poll the other replica's index (asking NEAR itself would cache it on a miss)
        await wait_for_stats(
            two, TASK, lambda t: t["semantic_cache"]["gate"]["entries"] >= 1, timeout_s=3.0
        )
        assert time.monotonic() - t0 < 3.0
        near = await ask(two, NEAR)
        assert is_hit(near, first), near
        assert near["similarity"] >= 0.8
        # the hit is counted once, in the counters both replicas share
        stats = await wait_for_stats(one, TASK, lambda t: t["semantic_cache"]["hits"] >= 1)
        assert stats["semantic_cache"]["hits"] == 1


async def test_a_killed_redis_costs_the_semantic_cache_no_request(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    private_redis: RedisServer,
) -> None:
    """Lookups never leave the process: with Redis gone, near-repeats are still hits from the
    in-process index, and new answers are still indexed (the log append fails quietly)."""
    async with gateway(
        tmp_path,
        shared_backends,
        smol_server.base_url,
        redis_url=private_redis.url,
        prefix="cgsem",
        edit=semantic(fixed_threshold=0.8),
    ) as client:
        first = await ask(client, FIRST)
        assert is_miss(first)
        private_redis.signal(signal.SIGKILL)
        assert private_redis.proc is not None and private_redis.proc.poll() is not None

        again = await ask(client, FIRST)  # ask() asserts 200 on each
        assert again["cached"] is True and again["label"] == first["label"]
        near = await ask(client, NEAR)
        assert is_hit(near, first), near
        far = await ask(client, FAR)
        assert is_miss(far), far
        far_near = await ask(client, FAR.capitalize() + ".")
        assert is_hit(far_near, far), far_near  # indexed though Redis never got it
        r = await client.post(
            "/v1/chat/completions",
            json={"model": f"cascade/{TASK}", "messages": [{"role": "user", "content": NEAR}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["cascade"]["cache"] == "semantic"


def sse_chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of an SSE body (``data: ...`` events, blank-line separated), checking
    that it ends with ``[DONE]``."""
    assert body.endswith("\n\n"), body[-200:]
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]", events[-1]
    return [json.loads(e[len("data: ") :]) for e in events[:-1]]


async def test_a_streamed_near_repeat_is_served_from_the_semantic_cache(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    edit = semantic(fixed_threshold=0.8)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        first = await ask(client, FIRST)
        assert is_miss(first)
        body = {
            "model": f"cascade/{TASK}",
            "messages": [{"role": "user", "content": NEAR}],
            "stream": True,
        }
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-cascade-cache"] == "semantic"
        assert r.headers["x-cascade-cached"] == "true"
        similarity = float(r.headers["x-cascade-similarity"])
        assert 0.8 <= similarity < 1.0
        chunks = sse_chunks(r.text)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == first["output"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        final = chunks[-1]["cascade"]
        assert final["cached"] is True and final["cache"] == "semantic"
        assert final["label"] == first["label"]
        assert final["similarity"] == pytest.approx(similarity, abs=1e-4)


def chat(*turns: str) -> list[dict[str, str]]:
    """A conversation: user, assistant, user, ... turns."""
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


async def test_a_chats_earlier_turns_must_match_for_a_hit(
    tmp_path: Path,
    shared_backends: dict,
    smol_server: LocalLLMServer,
    store_kind: str,
    store_settings: dict,
) -> None:
    """A chat's last message is what is compared; every turn before it must be equal."""

    async def complete(messages: list[dict[str, str]]) -> dict[str, Any]:
        r = await client.post(
            "/v1/chat/completions", json={"model": "cascade/chat", "messages": messages}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return {**body["cascade"], "content": body["choices"][0]["message"]["content"]}

    sky = chat("What colour is the sky?", "Blue.", "And the grass?")
    banana = chat("What colour is a banana?", "Yellow.", "And the grass?")
    sky_reworded = chat("What colour is the sky?", "Blue.", "and the grass")
    edit = semantic(task="chat", fixed_threshold=0.8)
    async with gateway(
        tmp_path, shared_backends, smol_server.base_url, edit=edit, settings=store_settings
    ) as client:
        first = await complete(sky)
        assert is_miss(first) and first["content"] == first["output"]
        other = await complete(banana)  # the same last message, another conversation
        assert is_miss(other), other
        again = await complete(sky_reworded)
        assert is_hit(again, first), again
        assert again["content"] == first["output"] and again["similarity"] >= 0.8


@pytest.mark.parametrize("encoder", ["small", "large", "nowhere"])
def test_the_semantic_encoder_must_be_an_encoder_backend(tmp_path: Path, encoder: str) -> None:
    path = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/v1")
    assert load_config(edit_config(path, semantic(fixed_threshold=0.8)), env={})
    edit_config(path, lambda data: data["tasks"][TASK]["semantic_cache"].update(encoder=encoder))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"tasks.{TASK}.semantic_cache.encoder" in message, message
    assert repr(encoder) in message and "not an encoder" in message
