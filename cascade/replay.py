"""Recorded model answers, replayed by key, so expensive large-LM calls are paid once.

Files are JSONL, one answer a line: ``{"model", "key", "request", "response"}`` where ``key``
is the sha256 of the request payload (see ``payload_key``). Benchmarks commit these files under
``bench/annotations/`` so later runs, sessions and CI replay them instead of recomputing.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"token": entry.get("token"), "logprob": entry.get("logprob")}
    if entry.get("top_logprobs") is not None:
        out["top_logprobs"] = [
            {"token": t.get("token"), "logprob": t.get("logprob")} for t in entry["top_logprobs"]
        ]
    return out


def _compact(response: dict[str, Any]) -> dict[str, Any]:
    """Keep what the parsers read: the first choice's message, finish reason and logprobs."""
    choices = []
    for c in response.get("choices", [])[:1]:
        msg = c.get("message") or {}
        lp = c.get("logprobs")
        if lp and lp.get("content") is not None:
            lp = {"content": [_token(e) for e in lp["content"]]}
        choices.append(
            {
                "message": {"role": msg.get("role", "assistant"), "content": msg.get("content")},
                "finish_reason": c.get("finish_reason"),
                "logprobs": lp,
            }
        )
    out: dict[str, Any] = {"choices": choices}
    if "usage" in response:
        out["usage"] = response["usage"]
    return out


class ReplayFile:
    """A directory of JSONL answer files: all are read, new answers go to ``write_name``."""

    def __init__(self, directory: Path, write_name: str = "answers") -> None:
        self.directory = directory
        self.write_path = directory / f"{write_name}.jsonl"
        self._index: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if directory.is_dir():
            for path in sorted(directory.glob("*.jsonl")):
                self._load(path)

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    self._index[(rec["model"], rec["key"])] = rec["response"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line from an interrupted run: the answer is re-made

    def __len__(self) -> int:
        return len(self._index)

    def get(self, model: str, key: str) -> dict[str, Any] | None:
        hit = self._index.get((model, key))
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, model: str, key: str, payload: dict[str, Any], response: dict[str, Any]) -> None:
        compact = _compact(response)
        request = {k: v for k, v in payload.items() if k != "model"}
        line = json.dumps(
            {"model": model, "key": key, "request": request, "response": compact},
            ensure_ascii=False,
            sort_keys=True,
        )
        with self._lock:
            self._index[(model, key)] = compact
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.write_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
