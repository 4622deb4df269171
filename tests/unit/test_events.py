"""The event hub: every subscriber gets every event, a slow one loses its oldest, close ends them all."""

from __future__ import annotations

import asyncio

import pytest

from signaling.events import EventHub
from signaling.messages import (
    Dtmf,
    Event,
    Mark,
    Playback,
    UtteranceDone,
    UtteranceStarted,
    UtteranceState,
    UtteranceSummary,
)

DONE = UtteranceSummary("u1", UtteranceState.DONE, "Hi.", 80.0, 120, 120, "Hi.")


async def drain(subscription, timeout: float = 1.0) -> list[Event]:
    """Everything up to the end of the subscription."""
    async with asyncio.timeout(timeout):
        return [event async for event in subscription]


async def test_events_reach_every_subscriber_in_order() -> None:
    hub = EventHub("s_1")
    first, second = hub.subscribe(), hub.subscribe()
    hub.emit(UtteranceStarted(utterance_id="u1"))
    hub.emit(UtteranceDone(summary=DONE))
    hub.close()
    for subscription in (first, second):
        events = await drain(subscription)
        assert events == [UtteranceStarted(utterance_id="u1", session_id="s_1", time=events[0].time),
                          UtteranceDone(summary=DONE, session_id="s_1", time=events[1].time)]  # fmt: skip
        assert all(isinstance(e.time, float) and e.time > 0 and e.dropped_events == 0 for e in events)
        assert "dropped_events" not in events[1].to_dict()


async def test_a_full_subscriber_drops_its_oldest_and_says_how_many() -> None:
    hub = EventHub("s_1")
    slow, fast = hub.subscribe(maxsize=3), hub.subscribe()
    for index in range(5):
        hub.emit(Playback(utterance_id="u1", played_ms=index))
    assert slow.dropped == 2
    event = await anext(slow)
    assert isinstance(event, Playback) and event.played_ms == 2, "the oldest two were dropped"
    assert event.dropped_events == 2, "the loss is reported with the next event delivered"
    assert event.to_dict()["dropped_events"] == 2 and list(event.to_dict())[-1] == "dropped_events"
    rest = [await anext(slow), await anext(slow)]
    assert [e.played_ms for e in rest] == [3, 4] and not any(e.dropped_events for e in rest)
    assert slow.dropped == 0
    hub.close()
    assert [e.played_ms for e in await drain(fast)] == [0, 1, 2, 3, 4], "other subscribers lose nothing"


async def test_close_ends_waiting_and_later_subscribers() -> None:
    hub = EventHub("s_1")
    waiting = asyncio.ensure_future(drain(hub.subscribe()))
    await asyncio.sleep(0)  # let it block on the empty queue
    assert not waiting.done()
    hub.close()
    assert await waiting == []
    assert await drain(hub.subscribe()) == [], "subscribing to a closed hub ends at once"
    hub.emit(Dtmf(digit="1"))  # nobody is left to receive it, and emitting does not fail


async def test_close_arrives_even_at_a_full_queue() -> None:
    hub = EventHub("s_1")
    subscription = hub.subscribe(maxsize=2)
    hub.emit(Dtmf(digit="1"))
    hub.emit(Dtmf(digit="2"))
    hub.close()  # the end of the stream displaces the oldest event rather than being lost
    events = await drain(subscription)
    assert events == [Dtmf(digit="2", session_id="s_1", time=events[0].time, dropped_events=1)]


async def test_an_unsubscribed_listener_gets_nothing_more() -> None:
    hub = EventHub("s_1")
    subscription = hub.subscribe()
    hub.emit(Dtmf(digit="1"))
    subscription.close()
    hub.emit(Dtmf(digit="2"))
    event = await anext(subscription)
    assert isinstance(event, Dtmf) and event.digit == "1"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(subscription)


async def test_the_tap_sees_every_event_as_emitted() -> None:
    hub = EventHub("s_1")
    seen: list[Event] = []
    hub.tap = seen.append
    returned = hub.emit(Mark(name="m1", utterance_id="u1", played_ms=40))
    assert seen == [returned] and returned.name == "m1" and returned.session_id == "s_1"
