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
