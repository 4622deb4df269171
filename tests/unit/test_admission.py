"""Admission control: fixed slots, a bounded first-come queue with a deadline, session caps, draining."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import Admission, CapacityGroup, Overloaded
from gateway.metrics import Metrics


CAPS = {CapacityGroup.WEBRTC: 2, CapacityGroup.TELEPHONY: 1, CapacityGroup.WEBSOCKET: 1000}


def admission(*, slots: int = 2, queue: int = 2, timeout: float = 5.0) -> Admission:
    return Admission(
        max_syntheses=slots, queue_size=queue, queue_timeout=timeout, max_sessions=CAPS, metrics=Metrics()
    )


def sample(gate: Admission, name: str, **labels: str) -> float | None:
    return gate.metrics.registry.get_sample_value(name, labels)


def rejects(gate: Admission, reason: str) -> float:
    return sample(gate, "gateway_rejects_total", reason=reason) or 0.0


async def queued(gate: Admission, count: int) -> list[asyncio.Task]:
    """``count`` requests that have joined the queue (their tasks have run up to the wait)."""
    tasks = [asyncio.ensure_future(gate.synthesis_slot()) for _ in range(count)]
    async with asyncio.timeout(1):
        while len(gate._waiters) < count:
            await asyncio.sleep(0)
    return tasks


async def test_slots_are_granted_at_once_up_to_capacity() -> None:
    gate = admission(slots=2)
    first, second = await gate.synthesis_slot(), await gate.synthesis_slot()
    assert gate.active == 2 and sample(gate, "gateway_active_syntheses") == 2
    first.release()
    first.release()  # idempotent: the second call frees nothing
    assert gate.active == 1
    second.release()
    assert gate.active == 0 and sample(gate, "gateway_active_syntheses") == 0


async def test_a_freed_slot_goes_to_the_first_in_line() -> None:
    gate = admission(slots=1, queue=2)
    held = await gate.synthesis_slot()
    first, second = await queued(gate, 2)
    assert sample(gate, "gateway_admission_queue_depth") == 2
    held.release()
    slot = await asyncio.wait_for(first, 1)
    assert not second.done(), "one release, one hand-over"
    assert gate.active == 1, "the slot passed on without being counted free"
    slot.release()
    (await asyncio.wait_for(second, 1)).release()
    assert gate.active == 0 and sample(gate, "gateway_admission_queue_depth") == 0
    assert sample(gate, "gateway_admission_queue_wait_seconds_count") == 2


async def test_a_full_queue_refuses_at_once() -> None:
    gate = admission(slots=1, queue=1)
    held = await gate.synthesis_slot()
    (waiting,) = await queued(gate, 1)
    with pytest.raises(Overloaded) as refused:
        await asyncio.wait_for(gate.synthesis_slot(), 0.5)  # refused without waiting for the deadline
    assert refused.value.reason == "queue_full" and refused.value.retry_after == 2
    assert rejects(gate, "queue_full") == 1
    held.release()
    (await waiting).release()


async def test_new_requests_queue_behind_waiters_even_when_a_slot_frees() -> None:
    gate = admission(slots=1, queue=2)
    held = await gate.synthesis_slot()
    (first,) = await queued(gate, 1)
    held.release()  # handed to the waiter, not left for a newcomer to grab
    (later,) = await queued(gate, 1)
    slot = await first
    assert not later.done(), "the newcomer waits for the next release"
    slot.release()
    (await asyncio.wait_for(later, 1)).release()
    assert gate.active == 0


async def test_a_wait_past_the_deadline_is_refused_and_leaves_the_queue() -> None:
    gate = admission(slots=1, queue=2, timeout=0.05)
    held = await gate.synthesis_slot()
    with pytest.raises(Overloaded) as refused:
        await gate.synthesis_slot()
    assert refused.value.reason == "queue_timeout"
    assert not gate._waiters and sample(gate, "gateway_admission_queue_depth") == 0
    assert rejects(gate, "queue_timeout") == 1
    held.release()
    assert gate.active == 0, "no slot was handed to the request that gave up"


async def test_a_client_that_leaves_the_queue_takes_no_slot_with_it() -> None:
    gate = admission(slots=1, queue=2)
    held = await gate.synthesis_slot()
    (leaving,) = await queued(gate, 1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert not gate._waiters
    held.release()
    assert gate.active == 0
    (await asyncio.wait_for(gate.synthesis_slot(), 0.5)).release()


async def test_sessions_are_capped_per_group() -> None:
    gate = admission()
    gate.check_session(CapacityGroup.WEBRTC, live=1)
    gate.check_session(CapacityGroup.WEBSOCKET, live=999)
    with pytest.raises(Overloaded) as refused:
        gate.check_session(CapacityGroup.WEBRTC, live=2)
    assert refused.value.reason == "webrtc_capacity"
    with pytest.raises(Overloaded):
        gate.check_session(CapacityGroup.TELEPHONY, live=1)
    assert rejects(gate, "webrtc_capacity") == 1 and rejects(gate, "telephony_capacity") == 1


def test_every_phone_carrier_shares_the_telephony_cap() -> None:
    from signaling.session import Transport

    assert CapacityGroup.of(Transport.WEBSOCKET) is CapacityGroup.WEBSOCKET
    assert CapacityGroup.of(Transport.WEBRTC) is CapacityGroup.WEBRTC
    phone = set(Transport) - {Transport.WEBSOCKET, Transport.WEBRTC}
    assert phone and set(CapacityGroup.TELEPHONY.transports) == phone


async def test_a_draining_server_admits_nothing_new() -> None:
    gate = admission()
    held = await gate.synthesis_slot()
    gate.draining = True
    with pytest.raises(Overloaded) as synthesis:
        await gate.synthesis_slot()
    with pytest.raises(Overloaded) as session:
        gate.check_session(CapacityGroup.WEBRTC, live=0)
    assert synthesis.value.reason == session.value.reason == "shutting_down"
    assert rejects(gate, "shutting_down") == 2
    held.release()
    assert gate.active == 0, "work already admitted finishes normally"
