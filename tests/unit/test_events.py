"""The event hub: every subscriber gets every event, a slow one loses its oldest, close ends them all."""

from __future__ import annotations

import asyncio

import pytest

from signaling.events import EventHub


async def drain(subscription, timeout: float = 1.0) -> list[dict]:
    """Everything up to the end of the subscription."""
    async with asyncio.timeout(timeout):
        return [event async for event in subscription]


async def test_events_reach_every_subscriber_in_order() -> None:
    hub = EventHub("s_1")
    first, second = hub.subscribe(), hub.subscribe()
    hub.emit("utterance.started", utterance_id="u1")
    hub.emit("utterance.done", utterance_id="u1", played_ms=120)
    hub.close()
    for subscription in (first, second):
        events = await drain(subscription)
        assert [(e["type"], e["utterance_id"]) for e in events] == [("utterance.started", "u1"), ("utterance.done", "u1")]
        assert all(e["session_id"] == "s_1" and isinstance(e["time"], float) for e in events)
        assert events[1]["played_ms"] == 120 and "dropped_events" not in events[1]


async def test_a_full_subscriber_drops_its_oldest_and_says_how_many() -> None:
    hub = EventHub("s_1")
    slow, fast = hub.subscribe(maxsize=3), hub.subscribe()
    for index in range(5):
        hub.emit("playback", index=index)
    assert slow.dropped == 2
    event = await anext(slow)
    assert event["index"] == 2, "the oldest two were dropped"
    assert event["dropped_events"] == 2, "the loss is reported with the next event delivered"
    rest = [await anext(slow), await anext(slow)]
    assert [e["index"] for e in rest] == [3, 4] and not any("dropped_events" in e for e in rest)
    assert slow.dropped == 0
    hub.close()
    assert [e["index"] for e in await drain(fast)] == [0, 1, 2, 3, 4], "other subscribers lose nothing"


async def test_close_ends_waiting_and_later_subscribers() -> None:
    hub = EventHub("s_1")
    waiting = asyncio.ensure_future(drain(hub.subscribe()))
    await asyncio.sleep(0)  # let it block on the empty queue
    assert not waiting.done()
    hub.close()
    assert await waiting == []
    assert await drain(hub.subscribe()) == [], "subscribing to a closed hub ends at once"
    hub.emit("late")  # nobody is left to receive it, and emitting does not fail


async def test_close_arrives_even_at_a_full_queue() -> None:
    hub = EventHub("s_1")
    subscription = hub.subscribe(maxsize=2)
    hub.emit("a")
    hub.emit("b")
    hub.close()  # the end of the stream displaces the oldest event rather than being lost
    events = await drain(subscription)
    assert [e["type"] for e in events] == ["b"] and events[0]["dropped_events"] == 1


async def test_an_unsubscribed_listener_gets_nothing_more() -> None:
    hub = EventHub("s_1")
    subscription = hub.subscribe()
    hub.emit("a")
    subscription.close()
    hub.emit("b")
    assert (await anext(subscription))["type"] == "a"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(subscription)


async def test_the_tap_sees_every_event_as_emitted() -> None:
    hub = EventHub("s_1")
    seen: list[dict] = []
    hub.tap = seen.append
    returned = hub.emit("mark", name="m1")
    assert seen == [returned] and returned["type"] == "mark" and returned["name"] == "m1"
