"""Session events: one hub per session, any number of bounded subscribers.

A slow subscriber never blocks the session or other subscribers: when its
queue is full the oldest event is dropped and the loss is counted and
reported in the next event it receives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from signaling.messages import Event

_CLOSED = object()

E = TypeVar("E", bound=Event)


class TooManySubscribers(Exception):
    """The session already has as many subscribers as the caller allows."""


class Subscription:
    """An async iterator of events; ends when the session closes."""

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Event | object] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.watcher = False

    def _offer(self, event: Event | object) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is _CLOSED:
            raise StopAsyncIteration
        if self.dropped:
            event = replace(event, dropped_events=self.dropped)
            self.dropped = 0
        return event

    def close(self) -> None:
        self._hub._subscribers.discard(self)


class EventHub:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._subscribers: set[Subscription] = set()
        self.closed = False
        self.tap: Callable[[Event], None] | None = None  # sees every event (metrics, logs)

    def subscribe(self, maxsize: int = 1000, *, limit: int | None = None) -> Subscription:
        """A new subscription. With ``limit`` it is a watcher (the control API's): refused when the
        session already has ``limit`` watchers; the transport's own subscriptions never count."""
        if limit is not None and self.watchers >= limit:
            raise TooManySubscribers(f"session {self.session_id} already has {self.watchers} event watchers")
        subscription = Subscription(self, maxsize)
        subscription.watcher = limit is not None
        if self.closed:
            subscription._offer(_CLOSED)
        else:
            self._subscribers.add(subscription)
        return subscription

    @property
    def watchers(self) -> int:
        """The control API's subscriptions open now."""
        return sum(1 for subscription in self._subscribers if subscription.watcher)

    def stamped(self, message: E) -> E:
        """``message`` as this session's, now, not published: direct replies carry the same envelope as events."""
        return replace(message, session_id=self.session_id, time=round(time.time(), 3))

    def emit(self, event: E) -> E:
        """Publish ``event``, stamped; returns it as published."""
        event = self.stamped(event)
        if self.tap is not None:
            self.tap(event)
        for subscription in list(self._subscribers):
            subscription._offer(event)
        return event

    def close(self) -> None:
        self.closed = True
        for subscription in list(self._subscribers):
            subscription._offer(_CLOSED)
        self._subscribers.clear()
