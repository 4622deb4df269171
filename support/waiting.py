"""Waiting for a condition or an event instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


async def until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """``wait_until`` for async tests: keeps the test's own event loop (and its peers) running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


async def first(items: AsyncIterator[T], predicate: Callable[[T], bool], timeout: float, what: str) -> T:
    """Read ``items`` (an event stream) until one satisfies ``predicate``; what came before is consumed."""
    try:
        async with asyncio.timeout(timeout):
            async for item in items:
                if predicate(item):
                    return item
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None
    raise LookupError(f"the stream ended without {what}")
