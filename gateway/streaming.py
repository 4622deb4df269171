"""Streamed HTTP bodies for clients that must keep reading.

A streamed response (audio, server-sent events) holds resources while it
runs: a synthesis slot, a session subscription, a socket. A client that
stops reading makes each send wait for buffer space forever, so every send
here has a deadline: a client that takes nothing for ``SEND_TIMEOUT``
seconds has stalled, and its response is cut off. So is one whose source
fails after the headers went out (an engine stream whose audio ran far too
long). Either is logged and the response left incomplete: the server closes
the connection, so the client sees an error rather than an ending.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from cosyvoice import SynthesisError

log = logging.getLogger(__name__)

# A client that takes nothing for this long has stalled (a reader at real time takes some audio
# every chunk, under a second apart; a browser's EventSource reads at once).
SEND_TIMEOUT = 10.0


class StalledClient(Exception):
    """The client stopped reading: nothing could be sent for ``SEND_TIMEOUT`` seconds."""


class BoundedStreamingResponse(StreamingResponse):
    """A :class:`StreamingResponse` that gives up on a client that stops reading."""

    async def stream_response(self, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await send(message)
            except TimeoutError:
                raise StalledClient(f"the client read nothing for {SEND_TIMEOUT:g} s") from None

        try:
            await super().stream_response(send_in_time)
        except (StalledClient, SynthesisError) as error:
            log.warning("streamed response cut off: %s", error)
