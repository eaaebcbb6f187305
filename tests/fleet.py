"""What the multi-process tests share: the requests they send, and the configuration and
environment of gateway and learner processes on a shared Redis (one server or a cluster)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from cascade.versions import load_state
from tests.api_helpers import edit_config
from tests.conftest import ADMIN_TOKEN, MODELS, write_config
from tests.processes import Proc, until

TASK = "sentiment"
SERVE = ["serve", "--host", "127.0.0.1", "--no-learner", "--no-llm-server"]
LEARNER = "learner-scaleout"
GROUP = "learners"  # cascade.store.redis_demos.GROUP

# Short reviews SmolLM2 (the stand-in large LM, pinned by sha256) answers with a label word at
# temperature 0: an answer outside the label set is a 503, not a demonstration. Distinct, so that
# no request is a cache hit.
REVIEWS = [
    f"a {adj} film with a {other} {what}"
    for adj, pairs in {
        "awful": ["dull cast", "dull script", "warm cast", "warm script"],
        "beautiful": ["dull cast", "dull script", "warm cast", "warm script"],
        "boring": ["dull cast", "dull script", "warm cast", "warm script"],
        "brilliant": ["dull cast", "dull script", "warm cast", "warm script"],
        "charming": ["dull cast", "dull script", "warm cast", "warm script"],
        "clumsy": ["dull script", "warm cast", "warm script"],
        "excellent": ["dull cast", "warm cast"],
        "dull": ["dull cast", "dull script", "warm cast", "warm script"],
        "forgettable": ["dull cast", "dull script", "warm cast"],
        "funny": ["dull cast", "dull script", "warm cast", "warm script"],
        "good": ["dull cast", "warm cast", "warm script"],
        "gripping": ["dull cast", "dull script", "warm cast", "warm script"],
        "lovely": ["dull cast", "dull script", "warm cast", "warm script"],
        "painful": ["dull cast", "dull script", "warm cast", "warm script"],
        "poor": ["dull cast", "dull script", "warm cast", "warm script"],
        "terrible": ["dull script", "warm cast", "warm script"],
        "warm": ["dull cast", "warm cast", "warm script"],
    }.items()
    for other, what in (p.split() for p in pairs)
]


def fleet_env(tmp_path: Path, llm_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The environment of every gateway and learner process of one test."""
    config = write_config(tmp_path / "config.yaml", llm_url)

    def cheap_levels_answer_only_when_certain(data: dict[str, Any]) -> None:
        # the cheap levels run and learn, but answer only when certain (a confidence of 1.0,
        # which the logistic level reaches now and then): most requests are demonstrations.
        # The in-process small LM is left out of this task: this test is about shared state,
        # and on two cores it would only slow the stream down.
        levels = data["tasks"][TASK]["levels"]
        assert [lv["name"] for lv in levels] == ["logistic", "encoder", "small", "large"]
        for level in levels[:2]:
            level["policy"] = {"kind": "threshold", "threshold": 1.0}
        del levels[2]

    edit_config(config, cheap_levels_answer_only_when_certain)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CASCADE_", "LLM_", "REDIS_", "PROMETHEUS_"))
    }
    env.update(
        REDIS_URL=redis_url,
        CASCADE_REDIS_PREFIX=prefix,
        CASCADE_CONFIG=str(config),
        CASCADE_ADMIN_TOKEN=ADMIN_TOKEN,
        CASCADE_MODELS_DIR=str(MODELS),
        CASCADE_VERSION_POLL_S="0.2",
        CASCADE_LEARNER_NAME=LEARNER,
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="info",
    )
    return env


def gateway_proc(i: int, port: int, env: dict[str, str], tmp_path: Path) -> Proc:
    """Gateway number ``i`` on ``port``: serve-only, its own data directory and log."""
    return Proc(
        f"gateway-{i}",
        [*SERVE, "--port", str(port)],
        {**env, "CASCADE_DATA_DIR": str(tmp_path / f"gw{i}")},
        tmp_path / "logs" / f"gateway-{i}.log",
    )


class FleetProbe:
    """What the multi-process tests read from Redis about one task's stream and versions."""

    def __init__(self, r: Any, stream: str, versions: str) -> None:
        self.r, self.stream, self.versions = r, stream, versions

    async def latest(self) -> int:
        raw = await self.r.get(f"{self.versions}:latest")
        return int(raw) if raw else 0

    async def pending(self) -> int:
        try:
            return int((await self.r.xpending(self.stream, GROUP))["pending"])
        except ResponseError:  # no group yet
            return 0

    async def learner_listening(self) -> bool:
        try:
            consumers = await self.r.xinfo_consumers(self.stream, GROUP)
        except ResponseError:
            return False
        return any(c["name"] in (LEARNER, LEARNER.encode()) for c in consumers)

    async def learned_up_to(self, last_id: str) -> tuple[int, Any] | None:
        """(version, state) once the newest version holds every demonstration up to
        ``last_id`` and none is pending; else None."""
        v = await self.latest()
        blob = await self.r.get(f"{self.versions}:{v}")
        state = load_state(bytes(blob)) if blob else None
        done = state is not None and state.applied_id == last_id and await self.pending() == 0
        return (v, state) if done else None

    async def start(self, procs: list[Any], clients: list[Any]) -> None:
        """Start the processes; return once every gateway is ready and the learner listens."""
        for p in procs:
            p.start()

        async def all_ready() -> bool:
            codes = await asyncio.gather(*(c.get("/readyz") for c in clients))
            return all(x.status_code == 200 for x in codes)

        await until(f"{len(clients)} gateways ready (/readyz)", all_ready, 180, procs, 0.5)
        await until("the learner to listen on the stream", self.learner_listening, 120, procs)
