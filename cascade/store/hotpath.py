"""The Redis store's hot-path helpers: a circuit breaker and the local copy of recent outcomes."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class Breaker:
    """Open for ``cooldown_s`` after a failure, and until a probe finds Redis answering again.

    While open, no request goes to Redis. The probe is the store's own background PING, not a
    request: a stopped Redis (where every call waits out its socket timeout) costs requests
    nothing after the call that found it stopped."""

    def __init__(self, cooldown_s: float = 1.0) -> None:
        self.cooldown_s = cooldown_s
        self.open_until = 0.0
        self.is_open = False
        self.probing = False

    def probe_due(self) -> bool:
        """Open, cooled down and no probe running: time to ask Redis again."""
        return self.is_open and not self.probing and time.monotonic() >= self.open_until

    def succeed(self) -> None:
        self.probing = False
        self.is_open = False

    def trip(self) -> None:
        self.probing = False
        self.is_open = True
        self.open_until = time.monotonic() + self.cooldown_s


class LocalCache:
    """A bounded LRU of recent outcomes in this process, under the same keys as Redis's.

    Read only when Redis cannot answer: repeats stay answered from memory during an outage
    instead of running the models again, while a healthy Redis stays the one source of truth
    (a correction made through another process replaces the entry there)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def put(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        self._items[key] = (time.monotonic() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[1]

    def __len__(self) -> int:
        return len(self._items)
