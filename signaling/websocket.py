"""Real-time sessions over a WebSocket: JSON control and events, binary audio frames.

Audio goes out paced at real time (with a small lead), 20 ms per binary
message: s16le PCM at the rate the client asked for, or one Opus packet
(48 kHz mono) per message. Binary messages from the client are caller audio:
they are accepted and drained, counted but never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from media.opus import OpusEncoder
from media.pacing import PacedReader
from media.pcm import to_s16le
from media.playout import Frame
from signaling.protocol import ProtocolError, VoiceParser, apply, parse
from signaling.session import Session

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02
PCM_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


@dataclass(frozen=True)
class AudioFormat:
    """What the client hears: ``pcm`` (s16le at ``sample_rate``) or ``opus`` (48 kHz packets)."""

    codec: str = "pcm"
    sample_rate: int = 24000

    @classmethod
    def from_query(cls, codec: str | None, sample_rate: str | None) -> AudioFormat:
        codec = codec or "pcm"
        if codec == "opus":
            return cls("opus", 48000)
        if codec != "pcm":
            raise ProtocolError(f"unknown audio format '{codec}' (pcm or opus)")
        try:
            rate = int(sample_rate or 24000)
        except ValueError as error:
            raise ProtocolError(f"sample_rate must be an integer, not {sample_rate!r}") from error
        if rate not in PCM_RATES:
            raise ProtocolError(f"sample_rate {rate} not supported; choose one of {PCM_RATES}")
        return cls("pcm", rate)


class WebSocketTransport:
    """Runs one session over an accepted WebSocket until either side ends it."""

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
        self.websocket = websocket
        self.session = session
        self.audio = audio
        self.parse_voice = parse_voice
        self.inbound_audio_bytes = 0
        self._encoder = OpusEncoder(bitrate=opus_bitrate) if audio.codec == "opus" else None
        self._reader = PacedReader(session.buffer, round(audio.sample_rate * FRAME_SECONDS), self._send_frame, lead=lead)
        self._send_lock = asyncio.Lock()
        # Subscribed before anything is said: text that came with the opening starts an utterance the client sees.
        self._events = session.events.subscribe()

    async def run(self) -> None:
        events = self._events
        audio = {"format": self.audio.codec, "sample_rate": self.audio.sample_rate, "channels": 1, "frame_ms": 20}
        await self._send_json(self.session.events.stamped("session.created", session=self.session.describe(), audio=audio))
        tasks = [
            asyncio.ensure_future(self._receive()),
            asyncio.ensure_future(self._reader.run()),
            asyncio.ensure_future(self._forward(events)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() and not _is_disconnect(task.exception()):
                    log.error("session %s websocket failed", self.session.id, exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            events.close()
            await self.session.close("client disconnected")
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close()

    async def _receive(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                self.inbound_audio_bytes += len(message["bytes"])  # caller audio: drained
                self.session.touch()
                continue
            try:
                reply = apply(self.session, parse(message.get("text") or ""), self.parse_voice)
            except ProtocolError as error:
                reply = self.session.events.stamped("error", message=str(error))
            if reply is not None:
                await self._send_json(reply)
            if self.session.closed:
                return
            # Messages already received are handed over without a pause: yield, so that a client's flood
            # of them takes turns with every other session instead of holding the loop until it ends.
            await asyncio.sleep(0)

    async def _forward(self, events) -> None:
        async for event in events:
            await self._send_json(event)

    async def _send_frame(self, frame: Frame) -> None:
        self.session.on_frame(frame)
        if not frame.audio and not frame.underrun:
            return  # only marks or ends reached: nothing to hear
        if self._encoder is not None:
            data = await asyncio.get_running_loop().run_in_executor(None, self._encoder.encode, frame.samples)
        else:
            data = to_s16le(frame.samples)
        async with self._send_lock:
            await self.websocket.send_bytes(data)

    async def _send_json(self, payload: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(payload, ensure_ascii=False))


def _is_disconnect(error: BaseException) -> bool:
    return isinstance(error, (WebSocketDisconnect, ConnectionError, RuntimeError))
