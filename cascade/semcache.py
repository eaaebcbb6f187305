"""The semantic cache: a request worded like an earlier one gets the large LM's earlier answer.

What is matched is the request as the model would see it. A *partition* holds everything that
must be equal for an answer to carry over (the task and its configuration, generation settings
that change the answer, the cache scope: the tenant unless the task shares its cache, and for a
chat every turn before the last); the similarity is the cosine of sentence embeddings of the
rest (the input text, or a chat's last message). A tenant's partition is searched with its own
requests only, so a wrong answer one tenant taught through ``/feedback`` never reaches another.

Entries are the large LM's answers (or a ``/feedback`` correction); a cheaper level's answer is
never written here. They go to a log in the store (capped, aged out), and every gateway feeds
its own approximate-nearest-neighbour index (usearch, HNSW) from that log in the background,
so an answer cached by one replica is a hit on all of them within a poll interval; the lookup
itself makes no round trip. Whether a neighbour's answer is served is the
``policies.semantic`` gate's call; its comparisons go to a second log, so every gateway learns
from all of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from usearch.index import Index

from cascade.quality import QualityMeasure
from cascade.semantic_settings import SemanticCacheConfig
from policies.semantic import (
    FEATURES,
    MISS,
    NEIGHBOURS,
    FixedGate,
    GateDecision,
    LearnedGate,
    neighbour_features,
)

log = logging.getLogger(__name__)

#: An entry this close to an older one in the same partition replaces it (a correction, or
#: the large LM's newer answer to the same words).
SAME_VECTOR = 0.9999

#: The store log of a task's gate comparisons is the task's log name with this suffix.
COMPARISONS = ":comparisons"

#: How long a comparison stays in the shared log (the gate's window caps it too).
COMPARISON_TTL_S = 30 * 86_400


class Embedder(Protocol):
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


@dataclass
class Entry:
    entry_id: str
    part: str
    vec: np.ndarray
    output: str
    label: str | None
    level: str
    expires: float  # epoch seconds
    record: float | None = None  # the large LM's confidence in it (classify); 1.0: a correction


@dataclass
class Neighbour:
    """The nearest live entry a request's partitions hold."""

    entry: Entry
    similarity: float


@dataclass
class Lookup:
    """One request's semantic lookup, carried through its walk to be learned from."""

    part: str  # where this request's own answer is written
    parts: list[str]  # searched: the request's own partition, and the shared one for a tenant
    vec: np.ndarray
    neighbour: Neighbour | None
    decision: GateDecision
    features: np.ndarray | None = None  # what the gate saw (None: no neighbour)
    lookup_ms: float = 0.0
    own: str = ""  # this tenant's own partition: where its /feedback corrections go
    text: str = ""  # what was embedded


def encode_vec(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype=np.float16).tobytes()).decode()


def decode_vec(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)


def partition(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]


class _Index:
    """One partition's vectors in a usearch HNSW index, keyed by a local integer."""

    def __init__(self, dim: int) -> None:
        self.index = Index(ndim=dim, metric="cos", dtype="f32")
        self.entries: dict[int, Entry] = {}

    def add(self, key: int, entry: Entry) -> None:
        self.index.add(key, entry.vec)
        self.entries[key] = entry

    def remove(self, key: int) -> None:
        if self.entries.pop(key, None) is not None:
            self.index.remove(key)

    def nearest(self, vec: np.ndarray, k: int, now: float) -> list[Neighbour]:
        """Up to ``k`` live entries, nearest first (expired ones are skipped, not counted)."""
        if not self.entries:
            return []
        found = self.index.search(vec, min(2 * k, len(self.entries)))
        out = []
        for key, dist in zip(found.keys, found.distances, strict=True):
            entry = self.entries.get(int(key))
            if entry is not None and entry.expires > now:
                out.append(Neighbour(entry, float(1.0 - dist)))
        return out[:k]


class SemanticCache:
    """One task's semantic cache: the partitions' indexes, the gate, and the log cursor."""

    def __init__(
        self, task: str, cfg: SemanticCacheConfig, encoder: Embedder, ttl_s: int, seed: int = 0
    ) -> None:
        self.task = task
        self.cfg = cfg
        self.encoder = encoder
        self.ttl_s = cfg.ttl_s or ttl_s
        self.gate: LearnedGate | FixedGate = (
            FixedGate(cfg.fixed_threshold, cfg.floor)
            if cfg.fixed_threshold is not None
            else LearnedGate(
                target=cfg.target_agreement,
                floor=cfg.floor,
                z=cfg.z,
                min_samples=cfg.min_samples,
                verify_share=cfg.verify_share,
                residual_prior=cfg.residual_prior,
                window=cfg.comparisons,
            )
        )
        self._indexes: dict[str, _Index] = {}
        self._order: deque[tuple[int, str]] = deque()  # (key, partition), oldest first
        self._by_id: dict[str, tuple[int, str]] = {}  # live entries
        self._seen: OrderedDict[str, None] = OrderedDict()  # every id indexed (newest last)
        self._next_key = 0
        self.cursor: str | None = None  # the last log entry this process has indexed
        self.rng = np.random.default_rng(seed)
        self.cmp_cursor: str | None = None  # the last comparison read from the shared log
        self._own_cmp: set[str] = set()  # tags of comparisons this process made (learned)
        self._tag = f"{uuid.uuid4().hex[:12]}:"  # this process's comparison tags' prefix
        self._seq = 0
        self.n_labels: int | None = None  # a classify task's label count (the vote's prior)
        self.quality: QualityMeasure | None = None  # a generate task's measure of agreement
        self.shares_embedding = False  # the task's levels may reuse the request's embedding

    def __len__(self) -> int:
        return len(self._by_id)  # live entries (``_order`` may still hold replaced ones)

    def report(self) -> dict[str, Any]:
        """The gate's thresholds and the agreement behind them, for ``/admin/stats``."""
        return {
            "entries": len(self),
            "target_agreement": self.gate.target,
            "fixed_threshold": self.gate.fixed,
            **self.gate.summary(),
        }

    # ------------------------------------------------------------------ lookup

    def embed(self, text: str) -> np.ndarray:
        return np.asarray(self.encoder.embed([text])[0], dtype=np.float32)

    def lookup(self, parts: list[str], vec: np.ndarray, length: int = 0) -> Lookup:
        """The nearest live neighbours in ``parts`` and the gate's decision on the nearest
        (``length``: the request's, in characters, one of the gate's features)."""
        now = time.time()
        found: list[Neighbour] = []
        for p in parts:
            idx = self._indexes.get(p)
            if idx is not None:
                found += idx.nearest(vec, NEIGHBOURS, now)
        if not found:
            return Lookup(parts[0], parts, vec, None, MISS)
        found.sort(key=lambda n: -n.similarity)
        found = found[:NEIGHBOURS]
        x = neighbour_features(
            [n.similarity for n in found],
            [n.entry.label for n in found],
            [n.entry.record for n in found],
            length,
            self.n_labels,
        )
        decision = self.gate.decide(x, self.rng.random())
        return Lookup(parts[0], parts, vec, found[0], decision, x)

    # ------------------------------------------------------------------ entries

    def entry_fields(
        self,
        part: str,
        vec: np.ndarray,
        output: str,
        label: str | None,
        level: str,
        record: float | None = None,
    ) -> dict[str, str]:
        return {
            "p": part,
            "v": encode_vec(vec),
            "o": output,
            "l": label or "",
            "lv": level,
            "x": f"{time.time() + self.ttl_s:.3f}",
            "c": "" if record is None else f"{record:.4f}",
        }

    def index(self, entry_id: str, fields: dict[str, str]) -> None:
        """Add one log entry to this process's index (once; the oldest go past the cap)."""
        if entry_id in self._seen:  # once: a replaced entry read again from the log stays out
            return
        self._seen[entry_id] = None
        while len(self._seen) > 2 * self.cfg.max_entries:
            self._seen.popitem(last=False)
        try:
            entry = Entry(
                entry_id,
                fields["p"],
                decode_vec(fields["v"]),
                fields["o"],
                fields.get("l") or None,
                fields.get("lv", ""),
                float(fields["x"]),
                float(fields["c"]) if fields.get("c") else None,
            )
        except (KeyError, ValueError) as e:  # a foreign or damaged entry: skip it
            log.warning("semantic cache entry %s of %s skipped: %s", entry_id, self.task, e)
            return
        if entry.expires <= time.time():
            return
        idx = self._indexes.get(entry.part)
        if idx is None:
            idx = self._indexes[entry.part] = _Index(entry.vec.shape[0])
        same = idx.nearest(entry.vec, 1, 0.0)
        if same and same[0].similarity >= SAME_VECTOR:  # the newer answer replaces it
            self.forget(same[0].entry.entry_id)
            idx = self._indexes.setdefault(entry.part, _Index(entry.vec.shape[0]))
        key = self._next_key
        self._next_key += 1
        idx.add(key, entry)
        self._order.append((key, entry.part))
        self._by_id[entry_id] = (key, entry.part)
        while len(self._by_id) > self.cfg.max_entries and self._order:
            self._evict(*self._order.popleft())

    def _evict(self, key: int, part: str) -> None:
        idx = self._indexes.get(part)
        if idx is None:
            return
        entry = idx.entries.get(key)
        if entry is not None:
            self._by_id.pop(entry.entry_id, None)
        idx.remove(key)
        if not idx.entries:
            del self._indexes[part]

    def forget(self, entry_id: str) -> None:
        """Drop one entry (a correction replaced it)."""
        where = self._by_id.get(entry_id)
        if where is not None:
            self._evict(*where)

    # ------------------------------------------------------------------ the gate's evidence

    def comparison(self, features: np.ndarray, agreed: bool | None) -> dict[str, str]:
        """One comparison this process made (or, with ``agreed`` None, one hit it served
        unverified), as a shared-log row. Its tag is remembered
        before the row can reach the log, so a sync that reads it back (even before this
        process has learned it) skips it: ``learn`` counts it once, here."""
        self._seq += 1
        tag = f"{self._tag}{self._seq}"
        self._own_cmp.add(tag)
        return {
            "f": ",".join(f"{v:.5f}" for v in features),
            "a": "" if agreed is None else "1" if agreed else "0",
            "t": tag,
        }

    def learn(self, logged: bool, fields: dict[str, str]) -> None:
        """A comparison this process made, into the gate at once (``logged``: it reached the
        shared log, which will hand it back once; otherwise its tag is dropped now)."""
        if not logged:
            self._own_cmp.discard(fields.get("t", ""))
        x, agreed = _parse_comparison(fields)
        if x is not None:
            self.gate.observe(x, agreed)

    def learn_shared(self, rows: list[tuple[str, dict[str, str]]]) -> None:
        """Comparisons read from the shared log; those this process made are already in."""
        parsed = []
        for _row_id, fields in rows:
            tag = fields.get("t", "")
            if tag in self._own_cmp:
                self._own_cmp.discard(tag)
                continue
            x, agreed = _parse_comparison(fields)
            if x is not None:
                parsed.append((x, agreed))
        if parsed:
            self.gate.observe_many(parsed)


def _parse_comparison(fields: dict[str, str]) -> tuple[np.ndarray | None, bool | None]:
    """(features, agreed); agreed is None for a served hit nobody verified."""
    try:
        x = np.array([float(v) for v in fields["f"].split(",")])
    except (KeyError, ValueError):  # a foreign or damaged row: skip it
        return None, False
    if x.shape != (len(FEATURES),) or not np.isfinite(x).all():
        return None, False
    a = fields.get("a")
    return x, None if a == "" else a == "1"
