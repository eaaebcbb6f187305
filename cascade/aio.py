"""Asyncio helpers shared by the background loops and the levels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


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


_END = object()


async def in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking generator in a worker thread and iterate it from the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def work() -> None:
        try:
            for item in make():
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as e:
            loop.call_soon_threadsafe(queue.put_nowait, _Raised(e))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    loop.run_in_executor(None, work)  # finishes on its own (callers can signal it to stop)
    while True:
        item = await queue.get()
        if item is _END:
            break
        if isinstance(item, _Raised):
            raise item.error
        yield item  # type: ignore[misc]


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error
