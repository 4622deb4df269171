"""The one race every transport runs: the first to end ends the others, which are gone before it returns."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import Overloaded, RateLimited
from gateway.ws_errors import close_code
from signaling.closecodes import CloseCode
from signaling.events import TooManySubscribers
from signaling.lifecycle import Finish, race


class Racer:
    """A racer that ends when told (with a result or an error) and records how it ended."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.ended = ""

    async def run(self) -> object:
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        self.ended = "finished"
        if self.error is not None:
            raise self.error
        return self.result

    def finish(self, result: object = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.go.set()


async def test_the_first_to_end_wins_and_the_others_are_cancelled_before_race_returns() -> None:
    sender, listener, watcher = Racer(), Racer(), Racer()
    contest = asyncio.ensure_future(race(sender.run(), listener.run(), watcher.run()))
    await asyncio.sleep(0)
    listener.finish("left")
    finish = await contest
    assert finish == Finish(1, "left")
    assert (sender.ended, listener.ended, watcher.ended) == ("cancelled", "finished", "cancelled")


async def test_an_error_is_the_outcome_not_an_escape() -> None:
    failing, other = Racer(), Racer()
    boom = ConnectionError("reset")
    contest = asyncio.ensure_future(race(failing.run(), other.run()))
    await asyncio.sleep(0)
    failing.finish(error=boom)
    finish = await contest
    assert finish.index == 0 and finish.error is boom and other.ended == "cancelled"
    with pytest.raises(ConnectionError):
        finish.value()


async def test_of_racers_ending_in_one_turn_the_first_given_wins() -> None:
    async def done(value: str) -> str:
        return value

    assert await race(done("sender"), done("listener")) == Finish(0, "sender")


async def test_cancelling_the_race_cancels_every_racer() -> None:
    first, second = Racer(), Racer()
    contest = asyncio.ensure_future(race(first.run(), second.run()))
    await asyncio.sleep(0)
    contest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await contest
    assert (first.ended, second.ended) == ("cancelled", "cancelled")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Overloaded("full", reason="capacity"), 1013),
        (RateLimited("slow down", retry_after=1), 1013),
        (TooManySubscribers("16 watchers"), 1013),
        (ValueError("bad format"), 1008),
    ],
)
def test_refusals_close_with_the_code_of_their_kind(error: Exception, code: int) -> None:
    assert close_code(error) == code and isinstance(close_code(error), CloseCode)
