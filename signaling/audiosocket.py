"""Asterisk AudioSocket: a TCP server that speaks sessions to phone calls.

Each frame is one type byte, a 2-byte big-endian length and the payload:
0x00 hangup, 0x01 the call's UUID (16 bytes), 0x03 a DTMF digit, 0x10 signed
16-bit little-endian mono audio at 8 kHz (0x11-0x16: 12, 16, 24, 32, 44.1 and
48 kHz), 0xff error. Asterisk does not pace what it is sent, so output goes
out at real time, 20 ms a frame, at the rate the caller's audio arrives in.
The session's id is the call's UUID, so a dialplan that knows the UUID can
steer the call through the session control API; when the session closes
from our side (the control API, the idle timeout, a shutdown), the call is
hung up: a hangup frame, then the connection closes.

The protocol has no authentication: whoever reaches the port can place
calls, so the server listens on loopback unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import Callable

from media.pacing import PacedReader
from media.pcm import from_s16le, to_s16le
from media.playout import Frame
from signaling.bargein import BargeIn
from signaling.inbound import CallerAudio
from signaling.session import Session

log = logging.getLogger(__name__)

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
AUDIO_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000}
AUDIO_TYPES = {rate: kind for kind, rate in AUDIO_RATES.items()}
FIRST_AUDIO_WAIT = 0.2  # seconds to learn the caller's audio rate before speaking at 8 kHz


class ProtocolViolation(ValueError):
    pass


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BH", await reader.readexactly(3))
    return kind, await reader.readexactly(length) if length else b""


class AudioSocketCall:
    """One TCP connection from Asterisk."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        open_session: Callable[[str, int], Session],
        *,
        lead: float,
        barge_in: bool,
        greeting: str = "",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.open_session = open_session
        self.lead = lead
        self.barge_in_enabled = barge_in
        self.greeting = greeting
        self.call_id = ""
        self.session: Session | None = None
        self.barge_in: BargeIn | None = None
        self.inbound: CallerAudio | None = None
        self.rate = 8000

    async def run(self) -> None:
        tasks: list[asyncio.Task] = []
        try:
            kind, payload = await asyncio.wait_for(read_frame(self.reader), 10)
            if kind != UUID or len(payload) != 16:
                raise ProtocolViolation(f"the first frame must be a 16-byte UUID (got type 0x{kind:02x}, {len(payload)} bytes)")
            self.call_id = str(uuid.UUID(bytes=payload))
            first = await self._first_audio()
            if first is not None and first[0] == HANGUP:
                return
            self.session = self.open_session(self.call_id, self.rate)
            closed = asyncio.Event()
            self.session.on_close(closed.set)
            self.inbound = CallerAudio(self.session)
            if self.barge_in_enabled:
                self.barge_in = BargeIn(self.session, self.rate)
            if first is not None:
                self._handle(*first)
            pacer = PacedReader(self.session.buffer, self.rate // 50, self._send_frame, lead=self.lead)
            receiver = asyncio.ensure_future(self._receive())
            tasks = [receiver, asyncio.ensure_future(pacer.run()), asyncio.ensure_future(closed.wait())]
            if self.greeting:
                self.session.say(self.greeting, flush=True)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and isinstance(task.exception(), ProtocolViolation):
                    raise task.exception()
            if not receiver.done():  # the session ended on our side: hang up
                log.info("audiosocket %s: hanging up (%s)", self.call_id, self.session.close_reason or "call ended")
                await self._write(frame(HANGUP))
        except ProtocolViolation as error:
            log.warning("audiosocket %s: %s", self.call_id or "?", error)
            await self._write(frame(ERROR))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the caller hung up without a goodbye
        except Exception as error:  # refused (capacity, a duplicate UUID) or broken: this call only
            log.warning("audiosocket %s: %s", self.call_id or "?", error)
            await self._write(frame(ERROR))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.barge_in is not None:
                self.barge_in.close()
            if self.inbound is not None:
                self.inbound.log_summary()
            if self.session is not None:
                await self.session.close("call ended")
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _first_audio(self) -> tuple[int, bytes] | None:
        """The first frame after the UUID, to learn the caller's audio rate."""
        try:
            kind, payload = await asyncio.wait_for(read_frame(self.reader), FIRST_AUDIO_WAIT)
        except asyncio.TimeoutError:
            return None
        self.rate = AUDIO_RATES.get(kind, self.rate)
        return kind, payload

    async def _receive(self) -> None:
        while True:
            kind, payload = await read_frame(self.reader)
            if kind == HANGUP:
                return
            self._handle(kind, payload)

    def _handle(self, kind: int, payload: bytes) -> None:
        if kind in AUDIO_RATES:
            if len(payload) % 2:
                raise ProtocolViolation(f"audio frame with an odd length ({len(payload)} bytes)")
            if not self.inbound.admit(len(payload) / 2 / AUDIO_RATES[kind]):
                return
            if self.barge_in is not None and AUDIO_RATES[kind] == self.rate:
                self.barge_in.heard(from_s16le(payload))
        elif kind == DTMF:
            self.session.events.emit("dtmf", digit=payload[:1].decode("ascii", errors="replace"))
            self.session.touch()
        elif kind == ERROR:
            self.session.events.emit("error", message=f"asterisk reported error {payload.hex() or 'without a code'}")
        else:
            raise ProtocolViolation(f"unknown frame type 0x{kind:02x}")

    async def _send_frame(self, out: Frame) -> None:
        self.session.on_frame(out)
        if out.audio or out.underrun:
            if self.barge_in is not None:
                self.barge_in.sent(out.samples)
            await self._write(frame(AUDIO_TYPES[self.rate], to_s16le(out.samples)))

    async def _write(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            self.writer.write(data)
            await self.writer.drain()


class AudioSocketServer:
    """Accepts Asterisk's AudioSocket connections on a TCP port."""

    def __init__(self, host: str, port: int, make_call: Callable[[asyncio.StreamReader, asyncio.StreamWriter], AudioSocketCall]) -> None:
        self.host = host
        self.port = port
        self.make_call = make_call
        self.calls: set[AudioSocketCall] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket server on %s:%d", self.host, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        call = self.make_call(reader, writer)
        self.calls.add(call)
        try:
            await call.run()
        finally:
            self.calls.discard(call)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for call in list(self.calls):
            call.writer.close()
        if self._server is not None:
            await self._server.wait_closed()
