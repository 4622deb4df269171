"""Text that arrives while its audio plays: one reply, one continuous voice.

An agent's reply comes word by word from its language model. A
:class:`TextStream` carries it to an engine that can take text as it arrives
(:class:`TextStreamingEngine`, e.g. CosyVoice v2/v3 with its text-fed
decoding): the engine speaks the whole reply as one utterance rather than
clause by clause, so the prosody carries on and no silence opens at clause
boundaries. Other engines are driven clause by clause by their callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from cosyvoice.engine import AudioStream, SynthesisRequest


class TextStream:
    """Pieces of one reply's text: :meth:`append` as they come, then :meth:`close`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False
        self.text = ""  # every piece appended, joined

    def append(self, text: str) -> None:
        if self.closed:
            raise ValueError("the text stream is closed")
        if text:
            self.text += text
            self._queue.put_nowait(text)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def pieces(self) -> AsyncIterator[str]:
        """The pieces in order, until the close."""
        while (piece := await self._queue.get()) is not None:
            yield piece


@runtime_checkable
class TextStreamingEngine(Protocol):
    """An engine that can speak text as it arrives: ``request`` gives the voice, the mode and the first
    text; ``text`` the rest. Whether it does, as loaded, is its ``capabilities.text_streaming``."""

    def synthesize_text_stream(self, request: SynthesisRequest, text: TextStream) -> AudioStream: ...
