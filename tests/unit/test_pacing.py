"""The frame clock: frames due on a fixed grid, a bounded catch-up, and the aligned grid.

Most tests run the clock on a fake monotonic clock whose ``sleep`` only moves
time forward, so every due time is exact; one runs it on the real loop.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from media import pacing
from media.pacing import FrameClock

PERIOD = 0.02


class FakeTime:
    """``time.monotonic`` and ``asyncio.sleep`` for the pacing module: sleeping advances the clock."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime(1000.0)
    monkeypatch.setattr(pacing, "time", clock)
    monkeypatch.setattr(pacing, "asyncio", SimpleNamespace(sleep=clock.sleep))
    return clock


async def ticks(clock: FrameClock, fake: FakeTime, count: int, work: float = 0.0) -> list[tuple[int, float]]:
    """(index, time) of ``count`` ticks, with ``work`` seconds spent after each."""
    out = []
    for _ in range(count):
        index = await clock.tick()
        out.append((index, fake.now))
        fake.now += work
    return out


async def test_frames_are_due_on_a_grid_whatever_the_work_between(fake: FakeTime) -> None:
    clock = FrameClock(PERIOD)
    got = await ticks(clock, fake, 5, work=0.007)
    assert [index for index, _ in got] == [0, 1, 2, 3, 4]
    assert [at - 1000.0 for _, at in got] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08], abs=1e-9)
    assert fake.sleeps == pytest.approx([0.013] * 4, abs=1e-9), "each sleep is what the work left of the period"
    assert clock.frames == 5 and clock.late_total == pytest.approx(0.0, abs=1e-9)


async def test_a_late_reader_catches_up_at_once_then_is_paced_again(fake: FakeTime) -> None:
    clock = FrameClock(PERIOD)
    await ticks(clock, fake, 3)  # frames 0-2, the last at +0.04
    fake.now += 0.1  # the loop stalls for five periods
    got = await ticks(clock, fake, 6)
    # Frames 3-7 (due +0.06 ... +0.14) go out at once at +0.14; frame 8 waits for +0.16.
    assert [index for index, _ in got] == [3, 4, 5, 6, 7, 8]
    assert [at - 1000.0 for _, at in got] == pytest.approx([0.14] * 5 + [0.16], abs=1e-9)
    assert clock.late_max == pytest.approx(0.08, abs=1e-9)
    assert clock.late_total == pytest.approx(0.08 + 0.06 + 0.04 + 0.02, abs=1e-9)


async def test_a_long_stall_restarts_the_schedule_instead_of_a_burst(fake: FakeTime) -> None:
    clock = FrameClock(PERIOD, max_catch_up=0.2)
    await ticks(clock, fake, 2)
    fake.now += 0.5  # far beyond max_catch_up: 25 frames late
    got = await ticks(clock, fake, 3)
    assert [index for index, _ in got] == [0, 1, 2], "a new schedule from now"
    assert [at - 1000.5 for _, at in got] == pytest.approx([0.02, 0.04, 0.06], abs=1e-9)
    assert clock.late_max == pytest.approx(0.0, abs=1e-9), "the abandoned frames do not count as late"


async def test_lead_sends_that_much_audio_ahead_then_paces(fake: FakeTime) -> None:
    clock = FrameClock(PERIOD, lead=0.06)
    got = await ticks(clock, fake, 6)
    # Frames 0-3 are due at or before the start (n * 0.02 - 0.06 <= 0): sent at once; then one per period.
    assert [at - 1000.0 for _, at in got] == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.02, 0.04], abs=1e-9)


async def test_restart_begins_a_new_schedule_at_the_next_tick(fake: FakeTime) -> None:
    clock = FrameClock(PERIOD)
    await ticks(clock, fake, 3)
    fake.now += 0.005
    clock.restart()
    got = await ticks(clock, fake, 2)
    assert [index for index, _ in got] == [0, 1]
    assert [at - 1000.045 for _, at in got] == pytest.approx([0.0, 0.02], abs=1e-9)


async def test_aligned_clocks_tick_together_on_whole_periods(fake: FakeTime) -> None:
    fake.now = 1000.013
    first = FrameClock(PERIOD, aligned=True)
    assert await first.tick() == 0 and fake.now == 1000.013, "the first frame is still due at once"
    fake.now = 1000.031
    second = FrameClock(PERIOD, aligned=True)
    await second.tick()  # its grid point is 1000.02: due, not waited for
    assert fake.now == 1000.031
    await first.tick()  # frame 1 of a grid started at 1000.00: due at 1000.02, already past
    times = []
    for _ in range(3):
        await first.tick()
        times.append(fake.now)
        await second.tick()
        times.append(fake.now)
    # Both on the same 20 ms grid: first's frame n at 1000.00 + n * 0.02, second's at 1000.02 + n * 0.02.
    assert times == pytest.approx([1000.04, 1000.04, 1000.06, 1000.06, 1000.08, 1000.08], abs=1e-9)


async def test_on_the_real_loop_frames_are_never_early_and_barely_late() -> None:
    clock = FrameClock(PERIOD)
    start = time.monotonic()
    for _ in range(26):
        await clock.tick()
    elapsed = time.monotonic() - start
    assert elapsed >= 25 * PERIOD - 1e-3, "asyncio.sleep never returns early (1 ms for the clock's resolution)"
    # A busy shared CPU can delay a wake-up; 100 ms over half a second still shows a paced clock, not a burst.
    assert elapsed < 25 * PERIOD + 0.1, elapsed
