"""API keys made with the real CLI, their limits across two gateway instances sharing Redis,
tenant scoping, and the admin API: fail closed, validated, recorded, shared."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.api_helpers import gateway, gateway_settings
from tests.conftest import ADMIN_TOKEN, REDIS_URL, running_app

CLI = Path(sys.executable).with_name("cascade-gateway")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CASCADE_", "REDIS_", "LLM_", "PROMETHEUS_"))
    }
    return subprocess.run(
        [str(CLI), *args], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def create_key(name: str, rpm: int | None = None, **env: str) -> tuple[str, str]:
    """``keys create`` prints the key (stdout, once) and its id (stderr); return both."""
    r = cli("keys", "create", "--name", name, *(["--rpm", str(rpm)] if rpm else []), **env)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert re.fullmatch(r"cg-[A-Za-z0-9_\-]{32}", key), r.stdout
    m = re.search(r"created key ([0-9a-f]{12}) \(" + re.escape(name), r.stderr)
    assert m and "shown only now" in r.stderr, r.stderr
    assert m.group(1) == hashlib.sha256(key.encode()).hexdigest()[:12]
    return key, m.group(1)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def redis_dump(client: redis.Redis, prefix: str) -> bytes:
    """Every key name, field and value under ``prefix``."""
    out = []
    for k in client.scan_iter(f"{prefix}:*", count=1000):
        out.append(k)
        kind = client.type(k)
        if kind == b"string":
            out.append(client.get(k) or b"")
        elif kind == b"hash":
            out += [b for kv in client.hgetall(k).items() for b in kv]
        elif kind == b"list":
            out += client.lrange(k, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(k))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(k, 0, -1, withscores=True)]
        elif kind == b"stream":
            out += [repr(e).encode() for e in client.xrange(k)]
    return b"\n".join(out)


@pytest.fixture(scope="module")
def keys(module_redis_prefix: str) -> dict[str, tuple[str, str]]:
    """name -> (key, id), made by the CLI against the shared Redis before any gateway starts."""
    env = {"REDIS_URL": REDIS_URL, "CASCADE_REDIS_PREFIX": module_redis_prefix}
    out = {n: create_key(n, **env) for n in ("tenant-a", "tenant-b", "doomed")}
    out["limited"] = create_key("limited", rpm=3, **env)
    return out


@pytest.fixture(scope="module")
async def pair(
    tmp_path_factory: pytest.TempPathFactory,
    shared_backends: dict,
    smol_server: Any,
    module_redis_prefix: str,
    keys: dict[str, tuple[str, str]],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two gateway instances sharing one Redis (small_threshold 0: the small LM answers)."""
    root = tmp_path_factory.mktemp("auth")
    kw: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "prefix": module_redis_prefix,
        "small_threshold": 0.0,
    }
    async with (
        gateway(root / "a", shared_backends, smol_server.base_url, **kw) as a,
        gateway(root / "b", shared_backends, smol_server.base_url, **kw) as b,
    ):
        yield a, b


def openai_client(app: Any, key: str) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway/v1"),
    )


def test_keys_are_shown_once_and_stored_hashed(
    keys: dict[str, tuple[str, str]], redis_client: redis.Redis, module_redis_prefix: str
) -> None:
    dump = redis_dump(redis_client, module_redis_prefix)
    for key, _ in keys.values():
        assert key.encode() not in dump
        assert hashlib.sha256(key.encode()).hexdigest().encode() in dump
    listed = cli("keys", "list", REDIS_URL=REDIS_URL, CASCADE_REDIS_PREFIX=module_redis_prefix)
    assert listed.returncode == 0, listed.stderr
    for name, (key, key_id) in keys.items():
        assert re.search(rf"{key_id}\s+active\s.*{name}", listed.stdout), listed.stdout
        assert key not in listed.stdout
    assert "rpm=3" in listed.stdout


async def test_missing_or_wrong_key_is_401(pair: tuple, keys: dict) -> None:
    a, _ = pair
    r = await a.get("/v1/models")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    r = await a.post("/generate", json={"task": "sentiment", "input": "fine"})
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    r = await a.get("/v1/models", headers=bearer("cg-not-a-key"))
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    with pytest.raises(openai.AuthenticationError):
        await openai_client(a.app, "cg-not-a-key").models.list()
    assert (await a.get("/v1/models", headers=bearer(keys["tenant-a"][0]))).status_code == 200
    assert (await a.get("/healthz")).status_code == 200  # probes need no key


async def test_rate_limit_holds_across_instances(pair: tuple, keys: dict) -> None:
    a, b = pair
    key, key_id = keys["limited"]
    if 60 - time.time() % 60 < 3:  # fixed one-minute windows: do not straddle two
        await asyncio.sleep(60 - time.time() % 60 + 0.1)
    for client in (a, b, a):
        r = await client.get("/v1/models", headers=bearer(key))
        assert r.status_code == 200, r.text
    r = await b.get("/v1/models", headers=bearer(key))
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert f"3 requests per minute exceeded for key {key_id}" in r.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        await openai_client(a.app, key).models.list()
    r = await a.post("/generate", json={"task": "sentiment", "input": "x"}, headers=bearer(key))
    assert r.status_code == 429 and "retry-after" in r.headers
    # other keys are not affected
    assert (await b.get("/v1/models", headers=bearer(keys["tenant-b"][0]))).status_code == 200


async def test_revoked_key_is_403(pair: tuple, keys: dict, module_redis_prefix: str) -> None:
    a, b = pair
    key, key_id = keys["doomed"]
    assert (await a.get("/v1/models", headers=bearer(key))).status_code == 200  # a caches it
    env = {"REDIS_URL": REDIS_URL, "CASCADE_REDIS_PREFIX": module_redis_prefix}
    r = cli("keys", "revoke", key_id, **env)
    assert r.returncode == 0 and f"revoked {key_id}" in r.stderr
    again = cli("keys", "revoke", key_id, **env)
    assert again.returncode == 1 and "no active key" in again.stderr
    # b never looked this key up: it sees the revocation at once
    r = await b.get("/v1/models", headers=bearer(key))
    assert r.status_code == 403 and f"{key_id} was revoked" in r.json()["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError):
        await openai_client(b.app, key).models.list()
    # a held the lookup in its cache: it follows within the cache window (~5 s)
    deadline = time.monotonic() + 10
    while (status := (await a.get("/v1/models", headers=bearer(key))).status_code) == 200:
        assert time.monotonic() < deadline, "a revoked key kept working"
        await asyncio.sleep(0.25)
    assert status == 403


async def test_tenants_are_scoped(pair: tuple, keys: dict) -> None:
    a, b = pair
    ka, kb = bearer(keys["tenant-a"][0]), bearer(keys["tenant-b"][0])
    req = {"task": "sentiment", "input": "a tender, moving film"}
    first = await a.post("/generate", json=req, headers=ka)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    repeat = await b.post("/generate", json=req, headers=ka)  # any instance: Redis is shared
    assert repeat.json()["cached"] is True
    other = await a.post("/generate", json=req, headers=kb)
    assert other.status_code == 200, other.text
    assert other.json()["cached"] is False  # tenant b never sees tenant a's cached answer
    assert (await b.post("/generate", json=req, headers=kb)).json()["cached"] is True

    rid = first.json()["request_id"]
    fb = {"request_id": rid, "label": "positive"}
    r = await a.post("/feedback", json=fb, headers=kb)
    assert r.status_code == 404, r.text  # another tenant's request does not exist for b
    assert rid in r.json()["detail"]
    r = await b.post("/feedback", json=fb, headers=ka)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "request_id": rid, "task": "sentiment"}


async def test_admin_token_is_checked(pair: tuple, keys: dict) -> None:
    a, _ = pair
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=a.app), base_url="http://gateway"
    ) as bare:
        for path in ("/admin/stats", "/admin/series", "/admin/tasks"):
            r = await bare.get(path)
            assert r.status_code == 401, (path, r.text)
            assert "admin token required" in r.json()["detail"]
            r = await bare.get(path, headers={"x-admin-token": "wrong"})
            assert r.status_code == 403 and r.json()["detail"] == "wrong admin token"
            r = await bare.get(path, headers=bearer("wrong"))
            assert r.status_code == 403
            assert (await bare.get(path, headers=bearer(ADMIN_TOKEN))).status_code == 200
            # an API key in Authorization does not hide the token in x-admin-token
            both = {**bearer(keys["tenant-a"][0]), "x-admin-token": ADMIN_TOKEN}
            assert (await bare.get(path, headers=both)).status_code == 200, path
        r = await bare.post("/admin/tasks/chat/policy", json={"level": "small", "params": {}})
        assert r.status_code == 401  # the token is checked before the body
        assert (await bare.get("/admin/")).status_code == 200  # the page itself is a shell


def small_policy(tasks: dict[str, Any], task: str = "sentiment") -> dict[str, Any]:
    levels = {lv["name"]: lv for lv in tasks["tasks"][task]["levels"]}
    return levels["small"]["policy"]


async def test_policy_change_is_validated_recorded_and_shared(pair: tuple) -> None:
    a, b = pair
    url = "/admin/tasks/sentiment/policy"
    before = small_policy((await a.get("/admin/tasks")).json())
    assert before["kind"] == "threshold" and before["threshold"] == 0.0
    bad = {
        "threshold above 1": ({"level": "small", "params": {"threshold": 1.5}}, 422),
        "not a number": ({"level": "small", "params": {"threshold": "high"}}, 422),
        "no params": ({"level": "small", "params": {}}, 422),
        "unknown parameter": ({"level": "small", "params": {"mu": 0.1}}, 422),
        "unknown field": ({"level": "small", "params": {"threshold": 0.5}, "by": "me"}, 422),
        "half valid": (
            {"level": "small", "params": {"threshold": 0.5, "target_agreement": 7}},
            422,
        ),
        "unknown level": ({"level": "medium", "params": {"threshold": 0.5}}, 404),
        "the large LM has no policy": ({"level": "large", "params": {"threshold": 0.5}}, 404),
    }
    for case, (body, status) in bad.items():
        r = await a.post(url, json=body)
        assert r.status_code == status, (case, r.text)
    r = await a.post("/admin/tasks/summarise/policy", json=bad["unknown level"][0])
    assert r.status_code == 404
    tasks = (await a.get("/admin/tasks")).json()
    assert small_policy(tasks) == before  # nothing a refused request asked for was applied
    assert tasks["tasks"]["sentiment"]["history"] == []

    t0 = time.time()
    body = {"level": "small", "params": {"threshold": 0.75}, "note": "tighter"}
    r = await a.post(url, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1 and r.json()["policy"]["threshold"] == 0.75
    tasks = (await a.get("/admin/tasks")).json()["tasks"]["sentiment"]
    assert small_policy({"tasks": {"sentiment": tasks}})["threshold"] == 0.75
    assert tasks["settings_revision"] == 1
    (entry,) = tasks["history"]
    assert entry["by"] == "admin" and t0 - 1 <= entry["at"] <= time.time() + 1
    assert (entry["level"], entry["params"], entry["note"]) == (
        "small",
        {"threshold": 0.75},
        "tighter",
    )

    # the other instance picks the change up through Redis (CASCADE_VERSION_POLL_S is 0.2 s)
    deadline = time.monotonic() + 10
    while small_policy((await b.get("/admin/tasks")).json())["threshold"] != 0.75:
        assert time.monotonic() < deadline, "instance b never saw the new threshold"
        await asyncio.sleep(0.1)
    assert (await b.get("/admin/tasks")).json()["tasks"]["sentiment"]["history"] == [entry]


async def test_key_strings_never_reach_redis(
    pair: tuple, keys: dict, redis_client: redis.Redis, module_redis_prefix: str
) -> None:
    """After all the traffic above (records, counters, cache, demonstrations)."""
    dump = redis_dump(redis_client, module_redis_prefix)
    assert b"req" in dump or b"cache" in dump  # there was traffic to look through
    for key, _ in keys.values():
        assert key.encode() not in dump


async def test_embedded_store_keys_and_admin_fail_closed(
    tmp_path: Path, shared_backends: dict, smol_server: Any
) -> None:
    data = tmp_path / "data"
    key, _ = create_key("solo", CASCADE_DATA_DIR=str(data))
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    assert key.encode() not in blob
    assert hashlib.sha256(key.encode()).hexdigest().encode() in blob

    settings = gateway_settings(
        tmp_path, smol_server.base_url, settings={"CASCADE_ADMIN_TOKEN": None}
    )
    assert settings.data_dir == data
    async with running_app(settings, shared_backends) as client:
        assert (await client.get("/v1/models")).status_code == 401
        r = await client.get("/v1/models", headers=bearer(key))
        assert r.status_code == 200, r.text
        # no admin token configured: every admin data route is off, whatever is sent
        routes = [
            (method.upper(), path.replace("{task}", "chat"))
            for path, ops in client.app.openapi()["paths"].items()
            if path.startswith("/admin/")
            for method in ops
        ]
        assert ("POST", "/admin/tasks/chat/policy") in routes and len(routes) >= 4
        for method, path in routes:
            for headers in ({}, {"x-admin-token": "anything"}, bearer(key)):
                r = await client.request(
                    method,
                    path,
                    json={"level": "small", "params": {"threshold": 0.5}},
                    headers=headers,
                )
                assert r.status_code == 403, (method, path, r.text)
                assert "CASCADE_ADMIN_TOKEN" in r.json()["detail"]
    blob = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert key.encode() not in blob
