"""Phone calls from a carrier's media stream, whatever its dialect.

The socket loop of every carrier: a serializer (:mod:`signaling.serializers`)
turns the carrier's messages into typed values, and this acts on them. Caller
audio goes through the real-time gate (:class:`CallerAudio`) and, with
barge-in on, to the speech detector; DTMF and the far end's problems become
session events. Audio goes out paced at real time with a small lead, so a
barge-in loses at most the lead and a clear empties what the far end holds.
Where the dialect has marks, every mark the session reaches goes out with the
audio, and the session reports it only when the far end echoes it: played
until is what the caller actually heard. A malformed message costs the far
end that message, never the call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from abc import abstractmethod
from collections.abc import Callable

from starlette.websockets import WebSocket

from media.playout import Frame, Reached
from signaling import messages
from signaling.bargein import BargeIn
from signaling.closecodes import CloseCode
from signaling.inbound import CallerAudio
from signaling.serializers import base as wire
from signaling.serializers.base import CarrierSerializer, Inbound, Message
from signaling.session import Session
from signaling.transport import SessionTransport, WebSocketWire

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # a far end that connects says which call within this, or is let go
PHONE_RATE = 8000  # a start that names no rate: the phone network's


class CarrierCall(SessionTransport):
    """One call: the carrier's dialect on one side, a session on the other."""

    def __init__(self, serializer: CarrierSerializer, *, lead: float, barge_in: bool) -> None:
        super().__init__(lead=lead)
        self.serializer = serializer
        self.barge_in_enabled = barge_in
        self.stream_id = ""
        self.barge_in: BargeIn | None = None
        self.inbound: CallerAudio | None = None
        self.inbound_frames = 0
        self.ignored_messages = 0  # malformed messages from the far end: counted, reported, skipped
        self._marks: dict[str, Reached] = {}
        self._mark_ids = itertools.count(1)

    @abstractmethod
    async def read(self) -> Message | None:
        """The far end's next message; None once it has gone."""

    async def serve(self, session: Session, first_words: str = "") -> None:
        self.inbound = CallerAudio(session)
        if self.barge_in_enabled:
            self.barge_in = BargeIn(session, session.buffer.sample_rate)
        await super().serve(session, first_words)

    async def await_start(self, timeout: float = START_TIMEOUT) -> wire.Start | None:
        """The call's start; None if the far end stopped or left first. Raises TimeoutError, ProtocolViolation."""
        async with asyncio.timeout(timeout):
            while (message := await self.read()) is not None:
                inbound = self.decode(message)
                if isinstance(inbound, wire.Start):
                    self.stream_id = inbound.stream_id
                    return inbound
                if isinstance(inbound, wire.Stop):
                    return None
        return None

    async def receive(self) -> None:
        while (message := await self.read()) is not None:
            inbound = self.decode(message)
            if isinstance(inbound, wire.Stop):
                return
            self.act(inbound)
            for held in self.serializer.released():
                self.act(held)

    def decode(self, message: Message) -> Inbound | None:
        """The message's typed value; None for one skipped (reported if it was malformed)."""
        try:
            return self.serializer.decode(message)
        except wire.Malformed as error:
            self.ignore(str(error))
        except wire.Undecodable as error:
            self._report(str(error))
        return None

    def act(self, inbound: Inbound | None) -> None:
        match inbound:
            case wire.Media():
                self._hear(inbound)
            case wire.Mark(name=name):
                reached = self._marks.pop(name, None)
                if reached is not None:
                    self.session.on_reached(reached)
            case wire.Dtmf(digit=digit):
                self.session.events.emit(messages.Dtmf(digit=digit))
                self.session.touch()
            case wire.Problem(message=message):
                self._report(message)

    def ignore(self, what: str) -> None:
        """A malformed message: logged once per call, then counted; reported to the session's watchers."""
        self.ignored_messages += 1
        name = self.serializer.name
        if self.ignored_messages == 1:
            stream = self.stream_id or "?"
            log.warning("%s stream %s: ignored %s (further ones are only counted)", name.lower(), stream, what)
        self._report(f"malformed {name} message ignored: {what}")

    async def send_frame(self, frame: Frame) -> None:
        marks = self.serializer.echoes_marks
        self.session.on_frame(frame, report_reached=not marks)
        if frame.audio or frame.underrun:
            if self.barge_in is not None:
                self.barge_in.sent(frame.samples)
            await self.send(self.serializer.encode_audio(frame.samples))
        if marks:
            for reached in frame.reached:
                name = f"{reached.kind}-{reached.tag}-{next(self._mark_ids)}"
                self._marks[name] = reached
                await self.send(self.serializer.encode_mark(name))

    async def on_event(self, event: messages.Event) -> None:
        if isinstance(event, messages.AudioCleared) and (clear := self.serializer.encode_clear()) is not None:
            await self.send(clear)

    def release(self) -> None:
        if self.barge_in is not None:
            self.barge_in.close()
        if self.inbound is not None:
            self.inbound.log_summary()

    def _hear(self, media: wire.Media) -> None:
        if not self.inbound.admit(media.seconds):
            return
        try:
            samples = self.serializer.decode_audio(media)
        except wire.Undecodable as error:
            self._report(str(error))
            return
        self.inbound_frames += 1
        if self.barge_in is not None and media.sample_rate == self.session.buffer.sample_rate and len(samples):
            self.barge_in.heard(samples)

    def _report(self, message: str) -> None:
        if self.session is not None:
            self.session.events.emit(messages.Error(message=message))


class WebSocketCall(WebSocketWire, CarrierCall):
    """A carrier that streams calls over a WebSocket: wait for the start, open the session, serve it.

    The start's custom parameters open the session at the start's sample rate;
    its ``text`` is what the call says first. A start that breaks the protocol,
    or a session refused, closes the socket with a policy violation.
    """

    def __init__(
        self,
        websocket: WebSocket,
        serializer: CarrierSerializer,
        open_session: Callable[[dict[str, str], int], Session],
        *,
        lead: float,
        barge_in: bool,
    ) -> None:
        super().__init__(serializer, lead=lead, barge_in=barge_in)
        self.websocket = websocket
        self.open_session = open_session
        self.call_id = ""

    async def run(self) -> None:
        """Serve the call until the far end stops it, the socket closes or the session ends."""
        name = self.serializer.name.lower()
        try:
            start = await self.await_start()
        except (TimeoutError, wire.ProtocolViolation) as error:
            why = str(error) or f"no start within {START_TIMEOUT:g} s"
            log.warning("%s stream ended before start: %s", name, why)
            refused = isinstance(error, wire.ProtocolViolation)
            await self.close(CloseCode.POLICY_VIOLATION if refused else CloseCode.NORMAL)
            return
        if start is None:
            log.warning("%s stream ended before start", name)
            await self.close()
            return
        self.call_id = start.call_id
        try:
            session = self.open_session(dict(start.parameters), start.sample_rate or PHONE_RATE)
        except Exception as error:
            log.warning("%s call %s refused: %s", name, self.call_id, error)
            await self.close(CloseCode.POLICY_VIOLATION)
            return
        await self.serve(session, start.parameters.get("text", ""))
