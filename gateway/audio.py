"""Engine streams to HTTP responses: streamed bodies and whole-audio collection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import numpy as np
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from cosyvoice import AudioStream
from gateway.streaming import BoundedStreamingResponse
from media.containers import StreamEncoder
from signaling.lifecycle import race


class StreamEndingResponse(BoundedStreamingResponse):
    """A body made from an engine stream; always cancels the stream at the end.

    Whatever ends the response (the last chunk, a client that went away or
    stopped reading, a stream that failed, a server shutdown), the engine
    work behind it stops, and with it the synthesis slot it held.
    """

    def __init__(
        self, stream: AudioStream, body: AsyncIterator[bytes], *, media_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.audio_stream = stream
        super().__init__(body, media_type=media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.audio_stream.cancel()


class AudioStreamingResponse(StreamEndingResponse):
    """Streams an engine stream through one encoder."""

    def __init__(
        self,
        stream: AudioStream,
        encoder: StreamEncoder,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        *,
        wrap: Callable[[bytes], bytes] | None = None,
        trailer: bytes = b"",
    ) -> None:
        """``wrap`` frames each piece of encoded audio (e.g. as an SSE event); ``trailer`` ends the body."""
        body = _encoded(stream, encoder, wrap or (lambda data: data), trailer)
        super().__init__(stream, body, media_type=media_type or encoder.media_type, headers=headers)


async def _encoded(
    stream: AudioStream, encoder: StreamEncoder, wrap: Callable[[bytes], bytes], trailer: bytes
) -> AsyncIterator[bytes]:
    try:
        async for samples in stream:
            data = encoder.encode(samples)
            if data:
                yield wrap(data)
        tail = encoder.finish()
        if tail:
            yield wrap(tail)
        if trailer:
            yield trailer
    finally:
        stream.cancel()


async def collect_audio(stream: AudioStream, request: Request) -> np.ndarray | None:
    """All of a stream's audio, or None (engine work stopped) if the client left first."""
    try:
        finish = await race(_concatenate(stream), _wait_for_disconnect(request))
    finally:
        stream.cancel()  # a no-op once the stream has ended
    return None if finish.index == 1 else finish.value()


async def _concatenate(stream: AudioStream) -> np.ndarray:
    async with stream:
        chunks = [samples async for samples in stream]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
