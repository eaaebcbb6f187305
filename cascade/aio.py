"""Asyncio helpers shared by the background loops."""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """End a background loop whose cancellation a library swallowed.

    A cancel that lands mid-call in a store client (redis-py) can come back as a TimeoutError,
    be caught as an ordinary error, or vanish, and the loop would run on forever, hanging
    shutdown. The task still knows it was asked to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Admission:
    """At most ``limit`` holders at a time; a caller that cannot get a turn within
    ``timeout_s`` is refused (False) instead of queueing without end; the runner counts it."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(limit)

    async def enter(self) -> bool:
        if not self._sem.locked():  # a free turn: no timer on the hot path
            await self._sem.acquire()
            return True
        try:
            await asyncio.wait_for(self._sem.acquire(), self.timeout_s)
        except TimeoutError:
            return False
        return True

    def leave(self) -> None:
        self._sem.release()
