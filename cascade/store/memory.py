"""Embedded store for one process: no Redis needed to serve.

Cache, counters and request records live in memory (bounded); demonstrations go to an
append-only JSONL file per task and versions to files under the data directory, so a restarted
gateway resumes its learned state and no demonstration is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

from cascade.store.base import BUCKETS, LeaseLostError, Store, add_counters


class _TTLDict:
    """A bounded LRU of values with per-entry expiry."""

    def __init__(self, max_entries: int) -> None:
        self._d: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: str) -> Any | None:
        item = self._d.get(key)
        if item is None:
            return None
        exp, value = item
        if exp is not None and exp < time.monotonic():
            del self._d[key]
            return None
        self._d.move_to_end(key)
        return value

    def set(self, key: str, value: Any, ttl_s: float | None) -> None:
        exp = None if not ttl_s else time.monotonic() + ttl_s
        self._d[key] = (exp, value)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)


def _seq(demo_id: str) -> int:
    return int(demo_id.split("-", 1)[1])


def _sem_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryStore(Store):
    kind = "embedded"

    def __init__(self, data_dir: Path, max_cache_entries: int = 100_000) -> None:
        super().__init__()
        self.data_dir = data_dir
        self._cache = _TTLDict(max_cache_entries)
        self._records = _TTLDict(max_cache_entries)
        self._totals: dict[str, defaultdict[str, float]] = {}
        self._buckets: dict[tuple[str, str, int], defaultdict[str, float]] = {}
        self._demo_lines: dict[str, int] = {}  # lines in each task's file
        self._read_pos: dict[str, int] = {}  # next line to hand to the learner
        self._read_off: dict[str, int] = {}  # its byte offset in the file
        self._acked: dict[str, int] = {}
        self._demo_event = asyncio.Event()
        self._tables: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
        self._rates: dict[tuple[str, int], int] = {}
        self._file_lock = asyncio.Lock()
        self._sem: dict[str, list[tuple[str, float, dict[str, str]]]] = {}
        self._sem_seq = 0
        self._leases: dict[str, tuple[str, float]] = {}  # task: (token, until)
        self._epochs: dict[str, int] = {}
        self._alive: dict[str, float] = {}  # learner: last heartbeat

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "data_dir": str(self.data_dir)}

    async def ping(self) -> bool:
        return True

    # ------------------------------------------------------------------ cache and records

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        return self._cache.get(key)

    async def cache_set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        if ttl_s > 0:
            self._cache.set(key, value, ttl_s)

    async def put_record(self, key: str, value: dict[str, Any], ttl_s: int | None) -> None:
        self._records.set(key, value, ttl_s)

    async def get_record(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    # ------------------------------------------------------------------ semantic cache log

    async def sem_append(
        self, task: str, entry: dict[str, str], ttl_s: int, cap: int
    ) -> str | None:
        log = self._sem.setdefault(task, [])
        now = time.time()
        self._sem_seq += 1
        entry_id = f"{int(now * 1000)}-{self._sem_seq}"
        log.append((entry_id, now, dict(entry)))
        cut = 0
        while cut < len(log) and (len(log) - cut > cap or log[cut][1] < now - ttl_s):
            cut += 1
        del log[:cut]
        return entry_id

    async def sem_read(
        self, task: str, after: str | None, count: int
    ) -> list[tuple[str, dict[str, str]]] | None:
        log = self._sem.get(task, [])
        start = 0
        if after is not None:
            key = _sem_order(after)
            while start < len(log) and _sem_order(log[start][0]) <= key:
                start += 1
        return [(i, dict(e)) for i, _, e in log[start : start + count]]

    # ------------------------------------------------------------------ tables

    def _table_path(self, table: str) -> Path:
        return self.data_dir / "tables" / f"{table}.json"

    def _table(self, table: str) -> dict[str, dict[str, Any]]:
        """Re-read when the file changed: another process (the CLI) may have written it."""
        path = self._table_path(table)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._tables.get(table)
        if cached is None or cached[0] != mtime:
            cached = (mtime, json.loads(path.read_text(encoding="utf-8") or "{}"))
            self._tables[table] = cached
        return cached[1]

    async def table_get(self, table: str, key: str) -> dict[str, Any] | None:
        return self._table(table).get(key)

    async def table_set(self, table: str, key: str, value: dict[str, Any]) -> None:
        data = dict(self._table(table))
        data[key] = value
        path = self._table_path(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        self._tables.pop(table, None)

    async def table_all(self, table: str) -> dict[str, dict[str, Any]]:
        return dict(self._table(table))

    async def rate_hit(self, key: str, limit: int, window_s: int = 60) -> tuple[bool, float]:
        now = time.time()
        window = int(now // window_s)
        slot = (key, window)
        self._rates[slot] = self._rates.get(slot, 0) + 1
        for old in [k for k in self._rates if k[1] < window]:
            del self._rates[old]
        return self._rates[slot] <= limit, (window + 1) * window_s - now

    # ------------------------------------------------------------------ counters

    async def _write_counters(
        self,
        totals: dict[str, defaultdict[str, float]],
        buckets: dict[tuple[str, str, int], defaultdict[str, float]],
    ) -> None:
        add_counters(self._totals, totals)
        add_counters(self._buckets, buckets)
        now = time.time()
        keep = {name: (size, ttl) for name, size, ttl in BUCKETS}
        for key in [k for k in self._buckets if (k[2] + 1) * keep[k[1]][0] < now - keep[k[1]][1]]:
            del self._buckets[key]

    async def _read_totals(self, task: str) -> dict[str, float]:
        return dict(self._totals.get(task, {}))

    async def _read_buckets(self, task: str, name: str, idx: list[int]) -> list[dict[str, float]]:
        return [dict(self._buckets.get((task, name, b), {})) for b in idx]

    # ------------------------------------------------------------------ demonstrations

    def demo_path(self, task: str) -> Path:
        """The task's demonstration log: one JSON demonstration per line, in order."""
        return self.data_dir / "demos" / f"{task}.jsonl"

    def _lines(self, task: str) -> int:
        if task not in self._demo_lines:
            path = self.demo_path(task)
            n = 0
            if path.exists():
                with path.open("rb") as f:
                    n = sum(1 for _ in f)
            self._demo_lines[task] = n
        return self._demo_lines[task]

    async def append_demo(self, task: str, demo: dict[str, Any]) -> None:
        line = json.dumps(demo, ensure_ascii=False, separators=(",", ":")) + "\n"
        path = self.demo_path(task)
        async with self._file_lock:
            n = self._lines(task)
            await asyncio.to_thread(_append_fsync, path, line)
            self._demo_lines[task] = n + 1
        self._demo_event.set()

    async def resume_demos(self, task: str, consumer: str, applied_id: str | None) -> None:
        start = _seq(applied_id) + 1 if applied_id else 0
        self._read_pos[task] = start
        self._read_off[task] = await asyncio.to_thread(_offset_of_line, self.demo_path(task), start)
        self._acked[task] = start

    async def read_demos(
        self, task: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        pos = self._read_pos.setdefault(task, 0)
        if self._lines(task) <= pos and block_ms > 0:
            self._demo_event.clear()
            try:
                await asyncio.wait_for(self._demo_event.wait(), block_ms / 1000)
            except TimeoutError:
                return []
        if self._lines(task) <= pos:
            return []
        off = self._read_off.get(task, 0)
        out, off = await asyncio.to_thread(_read_lines, self.demo_path(task), off, count)
        self._read_pos[task] = pos + len(out)
        self._read_off[task] = off
        return [(f"0-{pos + i}", d) for i, d in enumerate(out)]

    async def history(
        self, task: str, after: str | None, upto: str, count: int
    ) -> list[tuple[str, dict[str, Any]]]:
        start = _seq(after) + 1 if after else 0
        stop = _seq(upto) + 1
        n = min(count, stop - start)
        if n <= 0:
            return []
        off = await asyncio.to_thread(_offset_of_line, self.demo_path(task), start)
        out, _ = await asyncio.to_thread(_read_lines, self.demo_path(task), off, n)
        return [(f"0-{start + i}", d) for i, d in enumerate(out)]

    async def ack_demos(self, task: str, ids: list[str]) -> None:
        if ids:
            self._acked[task] = max(self._acked.get(task, 0), max(_seq(i) for i in ids) + 1)

    async def demo_lag(self, task: str) -> int:
        return max(0, self._lines(task) - self._acked.get(task, 0))

    # ------------------------------------------------------------------ versions

    def _version_dir(self, task: str) -> Path:
        return self.data_dir / "versions" / task

    async def put_version(
        self, task: str, blob: bytes, keep: int = 5, owner: str | None = None
    ) -> int:
        if owner is not None and not self._holds(task, owner):
            raise LeaseLostError(f"learner {owner} no longer holds task {task}")
        d = self._version_dir(task)
        d.mkdir(parents=True, exist_ok=True)
        number = await self.latest_version(task) + 1
        tmp = d / f".{number:08d}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, d / f"{number:08d}.safetensors")
        for old in sorted(d.glob("*.safetensors"))[:-keep]:
            old.unlink(missing_ok=True)
        return number

    async def latest_version(self, task: str) -> int:
        d = self._version_dir(task)
        files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        return int(files[-1].stem) if files else 0

    async def get_version(self, task: str, number: int) -> bytes | None:
        path = self._version_dir(task) / f"{number:08d}.safetensors"
        return path.read_bytes() if path.exists() else None

    # ------------------------------------------------------------------ learner leases
    # one process shares this store: leases only keep its own learners apart

    def _holds(self, task: str, token: str) -> bool:
        held = self._leases.get(task)
        return held is not None and held[0] == token and held[1] > time.monotonic()

    async def task_lease(
        self, task: str, owner: str, ttl_s: float, token: str | None = None
    ) -> str | None:
        held = self._leases.get(task)
        live = held is not None and held[1] > time.monotonic()
        if token is not None:
            if live and held is not None and held[0] == token:
                self._leases[task] = (token, time.monotonic() + ttl_s)
                return token
            return None
        if live and held is not None and not held[0].startswith(f"{owner}#"):
            return None
        self._epochs[task] = self._epochs.get(task, 0) + 1
        token = f"{owner}#{self._epochs[task]}"
        self._leases[task] = (token, time.monotonic() + ttl_s)
        return token

    async def task_release(self, task: str, token: str) -> None:
        if self._holds(task, token):
            del self._leases[task]

    async def task_owner(self, task: str) -> str | None:
        held = self._leases.get(task)
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0].rpartition("#")[0]

    async def learners_alive(self, member: str, ttl_s: float) -> int:
        now = time.monotonic()
        self._alive[member] = now
        return sum(1 for t in self._alive.values() if t > now - ttl_s)


def _append_fsync(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _offset_of_line(path: Path, line_no: int) -> int:
    if line_no == 0 or not path.exists():
        return 0
    with path.open("rb") as f:
        for i, _ in enumerate(iter(f.readline, b""), start=1):
            if i == line_no:
                return f.tell()
        return f.tell()


def _read_lines(path: Path, offset: int, count: int) -> tuple[list[dict[str, Any]], int]:
    """Up to ``count`` complete lines from a byte offset; a line still being written waits."""
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        f.seek(offset)
        while len(out) < count:
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            out.append(json.loads(line))
            offset = f.tell()
    return out, offset
