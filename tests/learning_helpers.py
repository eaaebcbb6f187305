"""Helpers for the online-learning tests: a small configuration whose large LM is SmolLM2 over
HTTP, a stream of reviews SmolLM2 labels the same way every time, and waiting on the learner."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from app.gateway import Gateway
from cascade.levels.logistic import LogisticLevel
from cascade.store.base import Store
from cascade.versions import TaskState, load_state
from tests.conftest import MODELS, SMOL, make_settings, running_app

T = TypeVar("T")
TASK = "sentiment"

# Two templates that SmolLM2 (pinned by sha256, greedy, over llama.cpp's server) labels the same
# way whatever the filler word: checked offline twice over, byte for byte the same answers, and
# the tests check it again on what the large LM actually said. Fillers it answers outside the
# label set for (then the request is a 503 while no cheaper level can stand in) are left out.
POSITIVE = "a brilliant and beautiful film with great {}"
NEGATIVE = "awful, boring, terrible {}"
TEMPLATES = (POSITIVE, NEGATIVE)
FILLERS = [
    "music", "cast", "script", "plot", "score", "dialogue", "costumes",
    "visuals", "humor", "lead actor", "villain", "editing", "effects", "story",
]  # fmt: skip
FIXED = "a brilliant and beautiful film with great music"  # a probe for the logistic level


def stream(n: int, start: int = 0) -> list[tuple[str, str]]:
    """(template, input) pairs alternating between the templates, cycling the fillers."""
    out = []
    for i in range(start, start + n):
        template = TEMPLATES[i % 2]
        out.append((template, template.format(FILLERS[(i // 2) % len(FILLERS)])))
    return out


def sentiment_task(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``sentiment`` classify task (labels and prompt) over ``levels``."""
    return {
        "kind": "classify",
        "labels": ["positive", "negative"],
        "prompt": {
            "system": "You are a sentiment classifier for movie reviews.",
            "user": "Review: {input}\n\nIs this review positive or negative? Answer with one word.",
        },
        "levels": levels,
    }


def learn_config(
    path: Path,
    large_url: str,
    policy: dict[str, Any] | None = None,
    batch: int = 4,
    tasks: dict[str, Any] | None = None,
) -> Path:
    """``sentiment``: a logistic level (learned online) in front of SmolLM2 over HTTP."""
    data: dict[str, Any] = {
        "backends": {
            "small": {"kind": "llama", "model": str(MODELS / SMOL), "n_ctx": 1024, "n_threads": 2},
            "large": {
                "kind": "openai",
                "base_url": large_url,
                "model": "smol",
                "timeout_s": 60,
                "max_retries": 1,
                "backoff_s": 0.05,
            },
        },
        "defaults": {"request_timeout_s": 120, "max_input_bytes": 2048},
        "tasks": tasks
        or {
            TASK: sentiment_task(
                [
                    {
                        "name": "logistic",
                        "kind": "logistic",
                        "cost": 0.0001,
                        "params": {"batch_size": batch},
                        "policy": policy or {"kind": "threshold", "threshold": 0.9},
                    },
                    {"name": "large", "kind": "openai", "backend": "large", "cost": 1.0},
                ]
            )
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def learning_app(
    root: Path, shared: dict[str, object], config: Path, **settings: object
) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """The real app with its learner (on unless CASCADE_LEARNER=False), data under ``root``."""
    return running_app(make_settings(root, config, **settings), shared)


def gw(client: httpx.AsyncClient) -> Gateway:
    return client.app.state.gateway  # type: ignore[attr-defined,no-any-return]


def logistic(client: httpx.AsyncClient, task: str = TASK) -> LogisticLevel:
    level = gw(client).cascade.task(task).levels[0]
    assert isinstance(level, LogisticLevel)
    return level


async def ask(client: httpx.AsyncClient, text: str, task: str = TASK, **kw: Any) -> dict[str, Any]:
    body = {"task": task, "input": text, "cache": False, **kw}
    r = await client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def send(client: httpx.AsyncClient, texts: list[str]) -> int:
    """Ask each in turn; return how many the large LM answered (each one a demonstration)."""
    return sum([(await ask(client, text))["level"] == "large" for text in texts])


async def stats(client: httpx.AsyncClient, task: str = TASK) -> dict[str, Any]:
    r = await client.get("/admin/stats")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None], timeout_s: float = 30.0, what: str = ""
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


async def latest(store: Store, task: str = TASK) -> tuple[int, TaskState | None]:
    """The newest published version and its learned state (metadata: demos, applied_id)."""
    number = await store.latest_version(task)
    blob = await store.get_version(task, number) if number else None
    return number, (load_state(blob) if blob is not None else None)


async def learned(client: httpx.AsyncClient, demos: int, task: str = TASK) -> int:
    """Wait until a version holding ``demos`` demonstrations is published *and* served here;
    return its number. More than ``demos`` (double counting) fails at once."""

    async def check() -> int | None:
        number, state = await latest(gw(client).store, task)
        if state is None:
            return None
        assert state.demos <= demos, f"version {number} holds {state.demos} > {demos} demos"
        if state.demos == demos and gw(client).cascade.task(task).version == number:
            return number
        return None

    return await eventually(check, 60, f"a served version with {demos} demonstrations")
