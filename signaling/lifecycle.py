"""One lifecycle for every connection that streams: race its two sides, tear down once.

Starlette's ``StreamingResponse`` idiom: what listens to the far end and
what sends to it run together, and the first to end ends the other, so a
client that leaves stops the sending and a sender that is done stops the
listening. The losers are cancelled and awaited before the caller tears
down, so teardown never runs beside a loop still using the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finish:
    """How a race ended: the first racer to end, and its result or error."""

    index: int  # its place in the order the racers were given
    result: Any = None
    error: BaseException | None = None

    def value(self) -> Any:
        """The result, or the error raised again."""
        if self.error is not None:
            raise self.error
        return self.result


async def race(*racers: Awaitable[Any]) -> Finish:
    """Run ``racers`` together until one ends; cancel and await the others; say which ended first.

    Of racers that end in the same turn the one given first wins, so list first
    the one whose outcome the caller reads.
    """
    tasks = [asyncio.ensure_future(racer) for racer in racers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        index, first = next((i, task) for i, task in enumerate(tasks) if task.done())
        if first.cancelled():
            return Finish(index, error=asyncio.CancelledError())
        return Finish(index, first.result() if first.exception() is None else None, first.exception())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
