"""Real-time pacing: fixed-length frames released on the wall clock.

Every real-time transport sends audio at the pace it is heard: WebRTC
because the RTP clock must advance steadily, telephony and WebSocket
sessions so that a barge-in can drop what the listener has not heard yet
and marks say exactly what was played. A small ``lead`` lets the sender stay
slightly ahead of real time to absorb network jitter.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from media.playout import Frame, PlayoutBuffer


class FrameClock:
    """Frame ``n`` is due at ``start + n * period - lead``.

    A reader that falls behind (a stalled event loop) gets the late frames
    at once, but never more than ``max_catch_up`` seconds' worth: beyond that
    the schedule restarts from now, so a listener never gets a long burst.

    An ``aligned`` clock starts its schedules on a grid of whole periods of
    the monotonic clock (the grid point at or just before now, so the first
    frame is still due at once): all aligned clocks of one period then tick
    together, and the work of their frames can be done in one batch.
    """

    def __init__(self, period: float, lead: float = 0.0, max_catch_up: float = 0.2, *, aligned: bool = False) -> None:
        self.period = period
        self.lead = lead
        self.max_catch_up = max_catch_up
        self.aligned = aligned
        self._start: float | None = None
        self._index = 0
        self.late_total = 0.0  # seconds frames went out after they were due
        self.late_max = 0.0
        self.frames = 0

    def restart(self) -> None:
        """Begin a new schedule at the next tick (after an idle pause)."""
        self._start = None

    @property
    def index(self) -> int:
        return self._index

    async def tick(self) -> int:
        """Wait until the next frame is due; return its index since the (re)start."""
        now = time.monotonic()
        if self._start is None:
            self._start, self._index = self._begin(now), 0
        else:
            self._index += 1
        due = self._start + self._index * self.period - self.lead
        if due > now:
            await asyncio.sleep(due - now)
        else:
            late = now - due
            if late > self.max_catch_up + self.lead:
                self._start, self._index = self._begin(now), 0  # give up on the old schedule
                late = 0.0
            self.late_total += late
            self.late_max = max(self.late_max, late)
        self.frames += 1
        return self._index

    def _begin(self, now: float) -> float:
        return math.floor(now / self.period) * self.period if self.aligned else now


class PacedReader:
    """Pulls frames from a playout buffer on a :class:`FrameClock` and hands them to ``deliver``.

    It sleeps while the buffer is idle and restarts its schedule when audio
    arrives, so an idle session costs nothing and the first frame of each
    utterance goes out at once.
    """

    def __init__(
        self,
        buffer: PlayoutBuffer,
        frame_samples: int,
        deliver: Callable[[Frame], Awaitable[None]],
        *,
        lead: float = 0.0,
    ) -> None:
        self.buffer = buffer
        self.frame_samples = frame_samples
        self.deliver = deliver
        self.clock = FrameClock(frame_samples / buffer.sample_rate, lead)
        self._audio_arrived = asyncio.Event()
        buffer.on_data = self._audio_arrived.set

    async def run(self) -> None:
        while True:
            if self.buffer.idle:
                self._audio_arrived.clear()
                await self._audio_arrived.wait()
                self.clock.restart()
            await self.clock.tick()
            await self.deliver(self.buffer.read(self.frame_samples))
