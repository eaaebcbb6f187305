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
    ``timeout_s`` is refused (``None``) instead of queueing without end."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(limit)
        self.waiting = 0
        self.shed = 0

    async def enter(self) -> bool:
        if not self._sem.locked():
            await self._sem.acquire()
            return True
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), self.timeout_s)
            return True
        except TimeoutError:
            self.shed += 1
            return False
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self._sem.release()
