"""Admission control: a fixed capacity, a short queue with a deadline, and clean refusals beyond.

Overload must not degrade the calls already admitted, so work beyond the
configured capacity is refused at the door (HTTP 503 with ``Retry-After``,
a WebSocket close with code 1013, a refused WebRTC offer) instead of being
squeezed in. HTTP syntheses may wait briefly for a slot; real-time sessions
never queue: a caller would rather hear "busy" than silence.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from enum import StrEnum

from gateway.metrics import Metrics, RejectReason
from signaling.session import Transport


class CapacityGroup(StrEnum):
    """Sessions that share one limit (``limits.max_<group>_sessions``): every phone call counts as telephony."""

    WEBSOCKET = "websocket"
    WEBRTC = "webrtc"
    TELEPHONY = "telephony"

    @classmethod
    def of(cls, transport: Transport) -> CapacityGroup:
        if transport is Transport.WEBSOCKET:
            return cls.WEBSOCKET
        return cls.WEBRTC if transport is Transport.WEBRTC else cls.TELEPHONY

    @property
    def transports(self) -> tuple[Transport, ...]:
        return tuple(transport for transport in Transport if CapacityGroup.of(transport) is self)

    @property
    def at_capacity(self) -> RejectReason:
        return RejectReason(f"{self.value}_capacity")


class Overloaded(Exception):
    """No capacity now; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, reason: RejectReason, retry_after: int = 2) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class RateLimited(Exception):
    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Slot:
    """One admitted synthesis; ``release`` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()


class Admission:
    def __init__(
        self, *, max_syntheses: int, queue_size: int, queue_timeout: float, max_sessions: dict[CapacityGroup, int], metrics: Metrics
    ) -> None:
        self.max_syntheses = max_syntheses
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.max_sessions = max_sessions
        self.metrics = metrics
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.draining = False

    async def synthesis_slot(self) -> Slot:
        """A slot for one HTTP synthesis, waiting up to ``queue_timeout`` in a bounded queue."""
        if self.draining:
            raise self._refuse("the server is shutting down", RejectReason.SHUTTING_DOWN)
        if self.active < self.max_syntheses and not self._waiters:
            return self._admit()
        if len(self._waiters) >= self.queue_size:
            raise self._refuse("all synthesis slots are busy and the queue is full", RejectReason.QUEUE_FULL)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.metrics.queue_depth.set(len(self._waiters))
        queued = time.monotonic()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except TimeoutError:
            if not (waiter.done() and not waiter.cancelled()):  # unless handed a slot at the deadline
                raise self._refuse(f"no synthesis slot within {self.queue_timeout:g} s", RejectReason.QUEUE_TIMEOUT) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as the client left
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self.metrics.queue_depth.set(len(self._waiters))
        self.metrics.queue_wait.observe(time.monotonic() - queued)
        return Slot(self)

    def check_session(self, group: CapacityGroup, live: int) -> None:
        """Refuse a new session when its group is at capacity (or the server drains)."""
        if self.draining:
            raise self._refuse("the server is shutting down", RejectReason.SHUTTING_DOWN)
        limit = self.max_sessions[group]
        if live >= limit:
            raise self._refuse(f"{group} sessions are at capacity ({limit})", group.at_capacity)

    def _admit(self) -> Slot:
        self.active += 1
        self.metrics.active_syntheses.set(self.active)
        return Slot(self)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                self.metrics.queue_depth.set(len(self._waiters))
                return
        self.active -= 1
        self.metrics.active_syntheses.set(self.active)

    def _refuse(self, message: str, reason: RejectReason) -> Overloaded:
        self.metrics.rejects.labels(reason).inc()
        return Overloaded(message, reason=reason)
