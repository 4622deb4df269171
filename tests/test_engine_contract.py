"""The AudioStream contract: early start, bounded lookahead, errors, and cancellation that stops the work."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cosyvoice.engine import AudioStream
from cosyvoice.timing import TimingSource, WordTiming


class CountingProducer:
    """A producer that records how far it got and whether it was stopped."""

    def __init__(self, chunks: int, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.produced = 0
        self.stopped = False

    async def __call__(self, emit) -> None:
        try:
            for index in range(self.chunks):
                if index == self.fail_at:
                    raise RuntimeError("engine broke")
                await asyncio.sleep(0.001)
                await emit(np.full(10, index, np.float32))
                self.produced += 1
        except asyncio.CancelledError:
            self.stopped = True
            raise


async def test_chunks_arrive_in_order() -> None:
    producer = CountingProducer(5)
    stream = AudioStream(16000, producer)
    values = [int(chunk[0]) async for chunk in stream]
    assert values == [0, 1, 2, 3, 4]
    assert stream.sample_rate == 16000


async def test_producer_starts_before_the_first_read_and_stays_bounded() -> None:
    producer = CountingProducer(100)
    stream = AudioStream(16000, producer, lookahead=3)
    await asyncio.sleep(0.1)
    assert producer.produced == 3, "works ahead by the lookahead, no further"
    stream.cancel()


async def test_cancel_stops_the_work_not_only_the_delivery() -> None:
    producer = CountingProducer(1000)
    async with AudioStream(16000, producer) as stream:
        await stream.__anext__()
    await asyncio.sleep(0.05)
    assert producer.stopped
    assert producer.produced < 10
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_cancel_wakes_a_waiting_consumer() -> None:
    async def slow(emit) -> None:
        await asyncio.sleep(60)

    stream = AudioStream(16000, slow)
    reader = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    stream.cancel()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 1)


async def test_producer_errors_reach_the_consumer() -> None:
    stream = AudioStream(16000, CountingProducer(5, fail_at=2))
    received = []
    with pytest.raises(RuntimeError, match="engine broke"):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


async def test_a_dropped_stream_does_not_leave_its_producer_running() -> None:
    producer = CountingProducer(1000)
    stream = AudioStream(16000, producer)
    await stream.__anext__()
    del stream
    await asyncio.sleep(0.05)
    assert producer.stopped


async def test_stats_and_done_callbacks_report_how_the_stream_went() -> None:
    outcomes = []
    stream = AudioStream(16000, CountingProducer(3))
    stream.add_done_callback(lambda s: outcomes.append((s.stats.outcome, s.stats.samples)))
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 3 and outcomes == [("done", 30)]
    assert 0 <= stream.stats.time_to_first_chunk < 1

    cancelled = AudioStream(16000, CountingProducer(100))
    cancelled.add_done_callback(lambda s: outcomes.append((s.stats.outcome, s.stats.samples)))
    await cancelled.__anext__()
    cancelled.cancel()
    cancelled.cancel()
    assert outcomes[-1] == ("cancelled", 10) and len(outcomes) == 2

    failing = AudioStream(16000, CountingProducer(5, fail_at=1))
    failing.add_done_callback(lambda s: outcomes.append(s.stats.outcome))
    with pytest.raises(RuntimeError):
        async for _ in failing:
            pass
    assert outcomes[-1] == "failed"


async def test_word_timings_come_with_their_chunk_and_alone_before_the_end() -> None:
    first, second = (
        WordTiming(w, i, i + 0.5, 6 * i, 6 * i + 5, TimingSource.ALIGNED) for i, w in enumerate(["hello", "there"])
    )

    async def producer(emit) -> None:
        await emit(np.zeros(10, np.float32), [first])
        await emit(np.zeros(10, np.float32))
        await emit(np.zeros(0, np.float32), [second])  # timings alone, after the last chunk

    stream = AudioStream(16000, producer)
    seen = [(len(chunk), list(stream.words)) async for chunk in stream]
    assert seen == [(10, [first]), (10, [first])]  # an empty chunk is never handed to the consumer
    assert list(stream.words) == [first, second] and stream.stats.outcome == "done"
