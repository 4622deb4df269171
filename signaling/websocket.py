"""Real-time sessions over a WebSocket: JSON control and events, binary audio frames.

The dialect is :mod:`signaling.serializers.session`; audio goes out paced at
real time with a small lead, so a cancel drops what the client has not been
sent yet and marks say what was played.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from media.playout import Frame
from signaling.messages import Error, Event, SessionCreated
from signaling.protocol import ProtocolError, VoiceParser, apply_off_loop
from signaling.serializers.session import AudioFormat, SessionSerializer
from signaling.session import Session
from signaling.transport import EndedBy, SessionTransport, WebSocketWire

log = logging.getLogger(__name__)

__all__ = ["AudioFormat", "WebSocketTransport"]


class WebSocketTransport(WebSocketWire, SessionTransport):
    """Runs one session over an accepted WebSocket until either side ends it."""

    close_reason = "client disconnected"

    def __init__(
        self,
        websocket: WebSocket,
        session: Session,
        audio: AudioFormat,
        parse_voice: VoiceParser,
        *,
        lead: float,
        opus_bitrate: int,
    ) -> None:
        super().__init__(lead=lead)
        self.websocket = websocket
        self.session = session
        self.serializer = SessionSerializer(audio, opus_bitrate=opus_bitrate)
        self.parse_voice = parse_voice
        self.inbound_audio_bytes = 0

    async def run(self, first_words: str = "") -> None:
        await self.serve(self.session, first_words)

    async def opened(self) -> None:
        created = SessionCreated(session=self.session.describe(), audio=self.serializer.audio)
        await self.send(self.serializer.encode_event(self.session.events.stamped(created)))

    async def receive(self) -> None:
        while (message := await self.read()) is not None:
            if isinstance(message, bytes):
                self.inbound_audio_bytes += len(message)  # caller audio: drained
                self.session.touch()
                continue
            try:
                reply = await apply_off_loop(self.session, self.serializer.decode(message), self.parse_voice)
            except ProtocolError as error:
                reply = self.session.events.stamped(Error(message=str(error)))
            if reply is not None:
                await self.send(self.serializer.encode_event(reply))
            if self.session.closed:
                return
            # Messages already received are handed over without a pause: yield, so that a client's flood
            # of them takes turns with every other session instead of holding the loop until it ends.
            await asyncio.sleep(0)

    async def send_frame(self, frame: Frame) -> None:
        self.session.on_frame(frame)
        if not frame.audio and not frame.underrun:
            return  # only marks or ends reached: nothing to hear
        if self.serializer.encodes_off_loop:
            data = await asyncio.get_running_loop().run_in_executor(None, self.serializer.encode_audio, frame.samples)
        else:
            data = self.serializer.encode_audio(frame.samples)
        await self.send(data)

    async def on_event(self, event: Event) -> None:
        await self.send(self.serializer.encode_event(event))

    async def ended(self, by: EndedBy, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, (WebSocketDisconnect, ConnectionError, RuntimeError)):
            log.error("session %s websocket failed", self.session.id, exc_info=error)
