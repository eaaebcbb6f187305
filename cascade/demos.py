"""Demonstrations: what the large LM (or a human, via feedback) said, and what every cheaper
level predicted for the same input, in a JSON-safe record the learner can replay."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from cascade.levels.base import Demo, LevelOutput
from policies import Decision, Features


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype=np.float16).tobytes()).decode("ascii")


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float16).astype(np.float32)


def level_record(
    out: LevelOutput,
    features: Features,
    decision: Decision | None,
    explored: bool = False,
    explore_p: float = 0.0,
) -> dict[str, Any]:
    """One cheaper level's prediction as stored in a demonstration. ``explore_p``: the chance
    this request had of exploring, so a learner can weight what it saw back to all traffic."""
    rec: dict[str, Any] = {
        "label": out.label,
        "text": out.text,
        "ready": out.ready,
        "valid": out.valid,
        "features": features.to_json(),
    }
    if out.lm is not None and out.lm.hidden is not None:
        rec["hidden"] = encode_vector(out.lm.hidden)
    if out.lm is not None and out.lm.hidden_gen is not None:
        rec["hidden_gen"] = encode_vector(out.lm.hidden_gen)
    if out.extra.get("aborted"):
        rec["aborted"] = True  # unfinished: neither judged nor learned from
    if decision is not None:
        rec["decision"] = {  # plain JSON types: a policy may compute these with numpy
            "defer": bool(decision.defer),
            "score": round(float(decision.score), 6),
            "explored": bool(explored),
            "explore_p": round(float(explore_p), 6),
        }
    return rec


def build_demo(
    task: str,
    request_id: str,
    text: str,
    answer: LevelOutput,
    levels: dict[str, dict[str, Any]],
    version: int,
    embedding: np.ndarray | None,
    source: str,
) -> dict[str, Any]:
    demo: dict[str, Any] = {
        "task": task,
        "request_id": request_id,
        "ts": round(time.time(), 3),
        "input": text,
        "label": answer.label,
        "output": answer.text,
        "source": source,
        "version": version,
        "levels": levels,
    }
    if embedding is not None:
        demo["embedding"] = encode_vector(embedding)
    return demo


def parse_demo(demo_id: str, d: dict[str, Any]) -> Demo:
    emb = d.get("embedding")
    return Demo(
        id=demo_id,
        text=d["input"],
        label=d.get("label"),
        output=d.get("output", ""),
        levels=d.get("levels", {}),
        source=d.get("source", "llm"),
        embedding=decode_vector(emb) if emb else None,
    )
