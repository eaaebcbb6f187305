"""Serialising a task's learned state as one safetensors blob (no pickle anywhere).

Keys are ``level.<name>.<param>`` and ``policy.<name>.<param>``; the metadata carries the task,
its labels (a version is refused by a task whose labels changed), the id of the last
demonstration applied (so a restarted learner resumes exactly) and counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load, save


@dataclass
class TaskState:
    task: str
    labels: list[str]
    levels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    policies: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def applied_id(self) -> str | None:
        return self.meta.get("applied_id") or None

    @property
    def demos(self) -> int:
        return int(self.meta.get("demos", "0"))


def dump_state(state: TaskState) -> bytes:
    tensors: dict[str, np.ndarray] = {}
    for kind, group in (("level", state.levels), ("policy", state.policies)):
        for name, arrays in group.items():
            for k, v in arrays.items():
                tensors[f"{kind}.{name}.{k}"] = np.ascontiguousarray(v)
    meta = dict(state.meta)
    meta["task"] = state.task
    meta["labels"] = json.dumps(state.labels)
    return bytes(save(tensors, metadata=meta))


def load_state(blob: bytes) -> TaskState:
    meta = _metadata(blob)
    tensors = load(blob)
    state = TaskState(task=meta.get("task", ""), labels=json.loads(meta.get("labels", "[]")))
    state.meta = {k: v for k, v in meta.items() if k not in ("task", "labels")}
    for key, arr in tensors.items():
        kind, name, param = key.split(".", 2)
        group = state.levels if kind == "level" else state.policies
        group.setdefault(name, {})[param] = arr
    return state


def _metadata(blob: bytes) -> dict[str, str]:
    """Read the safetensors header's ``__metadata__`` (8-byte length, then JSON)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    return dict(header.get("__metadata__") or {})
