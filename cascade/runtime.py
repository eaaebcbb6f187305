"""A task as it runs: its levels, their policies, the learned version they carry, and the
operator's live policy settings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade.config import Config, LevelConfig, TaskConfig
from cascade.levels import Level, LevelOutput
from cascade.semcache import SemanticCache
from cascade.versions import TaskState
from policies import Features, Policy, make_policy


@dataclass
class TaskRuntime:
    name: str
    config: TaskConfig
    levels: list[Level]
    policies: list[Policy | None]  # one per level; None for the last (the large LM)
    fingerprint: str
    version: int = 0
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)  # operator settings
    settings_revision: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # exploration coin
    semantic: SemanticCache | None = None  # near-repeats answered from cached answers

    @property
    def large(self) -> Level:
        return self.levels[-1]

    def policy(self, level: str) -> Policy:
        for lv, pol in zip(self.levels, self.policies, strict=True):
            if lv.name == level and pol is not None:
                return pol
        names = [lv.name for lv, p in zip(self.levels, self.policies, strict=True) if p]
        raise KeyError(f"task {self.name!r} has no policy on level {level!r} (has: {names})")

    def apply(self, state: TaskState, version: int) -> None:
        """Adopt a learned version; the operator's live settings stay as they are."""
        for lv in self.levels:
            if lv.name in state.levels:
                lv.load_state(state.levels[lv.name])
        for lv, pol in zip(self.levels, self.policies, strict=True):
            if pol is not None and lv.name in state.policies:
                pol.load_state(state.policies[lv.name])
        self.apply_overrides()
        self.version = version

    def apply_overrides(self) -> None:
        for level, params in self.overrides.items():
            self.policy(level).set_params(**params)


def normalise_input(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def build_policy(level_cfg: LevelConfig) -> Policy:
    pc = level_cfg.policy
    return make_policy(pc.kind, **pc.model_dump(exclude={"kind"}))


def fingerprint(config: Config, task: TaskConfig) -> str:
    """Changes whenever the task or a model it uses changes (part of the cache key)."""
    backends = {
        lc.backend: config.backends[lc.backend].model_dump(
            mode="json", exclude={"api_key", "base_url"}
        )
        for lc in task.levels
        if lc.backend
    }
    body = json.dumps([task.model_dump(mode="json"), backends], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def features_of(out: LevelOutput, before: list[LevelOutput]) -> Features:
    """The policy's view of a level's answer, with agreement with the levels before it."""
    extra = dict(out.extra)
    voters = [b for b in before if b.ready and b.valid and b.label is not None]
    if out.label is not None and voters:
        extra["agree_prev"] = sum(b.label == out.label for b in voters) / len(voters)
    lm = out.lm
    hidden = None
    if lm is not None and lm.hidden is not None and lm.hidden_gen is not None:
        hidden = np.concatenate([lm.hidden, lm.hidden_gen])  # a generated answer's states
    return Features(
        confidence=out.confidence,
        probs=out.probs,
        token_logprobs=None if lm is None else np.asarray(lm.token_logprobs, dtype=np.float64),
        entropies=None
        if lm is None or lm.entropies is None
        else np.asarray(lm.entropies, dtype=np.float64),
        extra=extra,
        embedding=out.embedding,
        hidden=hidden,
    )


def policy_view(rt: TaskRuntime) -> list[dict[str, Any]]:
    """The live configuration of a task's levels and policies, for the admin API."""
    out = []
    for lv, pol in zip(rt.levels, rt.policies, strict=True):
        entry: dict[str, Any] = {"name": lv.name, "kind": lv.kind, "cost": lv.cost}
        if pol is not None:
            entry["policy"] = {"kind": pol.kind, **pol.params(), **pol.report()}
        out.append(entry)
    return out
