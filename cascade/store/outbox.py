"""The demonstration outbox: where demonstrations wait while Redis is unreachable.

Every entry is also written to a per-process spill file (fsync'd, replaced atomically), so a
gateway that dies during a Redis outage loses nothing: the next process to start with the same
data directory adopts the spill files of processes that are no longer alive.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path


class Outbox:
    """A bounded FIFO of ``(task, serialised demonstration)`` mirrored to a spill file."""

    def __init__(self, spill_dir: Path, maxlen: int = 100_000) -> None:
        self.spill_dir = spill_dir
        self.spill = spill_dir / f"outbox-{os.getpid()}.jsonl"
        self.maxlen = maxlen
        self.dropped = 0  # only when more than ``maxlen`` wait at once
        self._q: deque[tuple[str, str]] = deque()
        self._adopt()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def push(self, task: str, data: str) -> None:
        """Queue one entry (the caller persists with ``save``, off the event loop)."""
        if len(self._q) >= self.maxlen:
            self._q.popleft()
            self.dropped += 1
        self._q.append((task, data))

    def peek(self) -> tuple[str, str]:
        return self._q[0]

    def pop(self) -> None:
        self._q.popleft()

    def save(self) -> None:
        """Rewrite the spill file to hold exactly what waits (remove it when nothing does)."""
        if not self._q:
            self.spill.unlink(missing_ok=True)
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.spill.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for task, data in self._q:
                f.write(json.dumps({"task": task, "data": data}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.spill)

    def _adopt(self) -> None:
        """Take over spill files left by processes that died during a Redis outage."""
        if not self.spill_dir.is_dir():
            return
        for path in sorted(self.spill_dir.glob("outbox-*.jsonl")):
            tail = path.stem.split("-", 1)[1]
            pid = int(tail) if tail.isdigit() else 0
            if pid != os.getpid() and _alive(pid):
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self._q.append((rec["task"], rec["data"]))
            if path != self.spill:
                path.unlink(missing_ok=True)
        if self._q:
            self.save()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
