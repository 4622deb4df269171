"""The far end's playout, as the carrier simulators keep it: a 20 ms clock, the audio sent and the marks between.

A carrier plays what it holds 20 ms a tick, reports a mark once everything sent
before it has played, and drops all it holds on a clear.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

TICK = 0.02  # seconds: every simulated carrier plays and sends 20 ms frames


async def ticks() -> AsyncIterator[tuple[int, float]]:
    """``(index, now)`` every 20 ms against a steady schedule from the first, so lateness does not accumulate."""
    start = time.monotonic()
    for index in itertools.count():
        await asyncio.sleep(max(0.0, start + index * TICK - time.monotonic()))
        yield index, time.monotonic()


class FarEndPlayout:
    """Float audio and mark names in the order they came; ``frame`` samples are played a tick."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self._queue: deque[np.ndarray | str] = deque()
        self._pending = np.zeros(0, np.float32)

    def add(self, item: np.ndarray | str) -> None:
        """Audio to play, or the name of a mark reached once the audio before it has played."""
        self._queue.append(item)

    def clear(self) -> list[str]:
        """Drop everything held; the names of the marks dropped with it."""
        names = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self._pending = np.zeros(0, np.float32)
        return names

    async def play(self, reached: Callable[[str], Awaitable[None]]) -> np.ndarray:
        """The next frame, padded with silence; ``reached`` hears each mark it passes, before the audio after it."""
        data = self._pending
        while len(data) < self.frame and self._queue:
            item = self._queue[0]
            if isinstance(item, str):
                if len(data):
                    break  # play up to the mark first
                self._queue.popleft()
                await reached(item)
                continue
            data = np.concatenate([data, self._queue.popleft()])
        played, self._pending = data[: self.frame], data[self.frame :]
        return np.concatenate([played, np.zeros(self.frame - len(played), np.float32)])
