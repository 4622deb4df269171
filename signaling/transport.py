"""The lifecycle every session transport shares, written once.

A transport runs one session over one connection. It subscribes to the
session's events before the first words are said (so their utterance is
seen), then races three loops (:func:`signaling.lifecycle.race`): what the
far end sends, the session's audio paced out at real time, and the session's
events until it closes. The first to end ends the others, and the transport
tears down once: the subscription, the session, the connection. Subclasses
say how to receive, how to send a frame and what an event means on their
wire; pipecat's output transports share their interruption handling the same
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from enum import Enum

from starlette.websockets import WebSocket, WebSocketState

from media.pacing import PacedReader
from media.playout import Frame
from signaling.closecodes import CloseCode
from signaling.lifecycle import race
from signaling.messages import Event
from signaling.serializers.base import Message
from signaling.session import LimitExceeded, Session

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02  # what every transport sends at a time, and what the pacer releases


class EndedBy(Enum):
    """Which of a transport's loops ended its session (in the order they race)."""

    FAR_END = 0  # receiving returned or failed: the far end left, hung up or broke the protocol
    SENDER = 1  # sending failed
    SESSION = 2  # the session closed on our side: the control API, the idle timeout, a shutdown


class SessionTransport(ABC):
    """Runs one session over one connection until either side ends it, then tears down once."""

    close_reason = "call ended"

    def __init__(self, *, lead: float) -> None:
        self.lead = lead
        self.session: Session | None = None
        self._send_lock = asyncio.Lock()  # audio, marks and events go out from different loops

    async def serve(self, session: Session, first_words: str = "") -> None:
        self.session = session
        events = session.events.subscribe()
        frame_samples = round(session.buffer.sample_rate * FRAME_SECONDS)
        pacer = PacedReader(session.buffer, frame_samples, self.send_frame, lead=self.lead)
        try:
            if first_words:
                try:
                    session.say(first_words, flush=True)
                except LimitExceeded as error:  # first words too long to take: the call goes on, silent until told
                    log.warning("%s call %s: its first words were refused: %s", session.transport, session.id, error)
            await self.opened()
            finish = await race(self.receive(), pacer.run(), self._follow(events))
            await self.ended(EndedBy(finish.index), finish.error)
        finally:
            events.close()
            self.release()
            await session.close(self.close_reason)
            await self.close()

    async def send(self, message: Message) -> None:
        async with self._send_lock:
            await self.write(message)

    @abstractmethod
    async def receive(self) -> None:
        """Take what the far end sends until it is done."""

    @abstractmethod
    async def send_frame(self, frame: Frame) -> None:
        """Send one paced frame of the session's audio (and report what it reached)."""

    @abstractmethod
    async def write(self, message: Message) -> None:
        """Put one message on the wire (called under the send lock)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection, if it is still open."""

    async def opened(self) -> None:
        """Greet the far end, once the session is set up and before the loops start."""

    async def on_event(self, event: Event) -> None:
        """What one session event means on this wire."""

    async def ended(self, by: EndedBy, error: BaseException | None) -> None:
        """Say goodbye as the dialect does, before the teardown."""

    def release(self) -> None:
        """Free what the transport holds besides the session and the connection."""

    async def _follow(self, events) -> None:
        async for event in events:
            await self.on_event(event)
            await asyncio.sleep(0)  # a backlog (a flood of bad messages makes one) goes out a turn at a time


class WebSocketWire:
    """Reading, writing and closing a Starlette WebSocket, for transports that run over one."""

    websocket: WebSocket

    async def read(self) -> Message | None:
        """The next message (a binary one as bytes); None once the client has gone."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return message["bytes"]
        return message.get("text") or ""

    async def write(self, message: Message) -> None:
        if isinstance(message, bytes):
            await self.websocket.send_bytes(message)
        else:
            await self.websocket.send_text(message)

    async def close(self, code: CloseCode = CloseCode.NORMAL) -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=code)
