"""Asterisk AudioSocket: a TCP server that speaks sessions to phone calls.

The dialect is :mod:`signaling.serializers.audiosocket`. Asterisk does not
pace what it is sent, so output goes out at real time, 20 ms a frame, at the
rate the caller's audio arrives in. The session's id is the call's UUID, so a
dialplan that knows the UUID can steer the call through the session control
API; when the session closes from our side (the control API, the idle
timeout, a shutdown), the call is hung up: a hangup frame, then the
connection closes. A frame that breaks the protocol gets an error frame.

The protocol has no authentication: whoever reaches the port can place
calls, so the server listens on loopback unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from signaling.carrier import CarrierCall
from signaling.serializers.audiosocket import HEADER, AudioSocketSerializer
from signaling.serializers.base import Inbound, Media, Message, ProtocolViolation, Stop
from signaling.session import Session
from signaling.transport import EndedBy

log = logging.getLogger(__name__)

FIRST_AUDIO_WAIT = 0.2  # seconds to learn the caller's audio rate before speaking at 8 kHz


class AudioSocketCall(CarrierCall):
    """One TCP connection from Asterisk."""

    serializer: AudioSocketSerializer

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
        super().__init__(AudioSocketSerializer(), lead=lead, barge_in=barge_in)
        self.reader = reader
        self.writer = writer
        self.open_session = open_session
        self.greeting = greeting
        self.call_id = ""
        self._first: Inbound | None = None

    async def run(self) -> None:
        try:
            start = await self.await_start()
            if start is None:
                return
            self.call_id = start.call_id
            self._first = await self._first_audio()
            if isinstance(self._first, Stop):
                return
            await self.serve(self.open_session(self.call_id, self.serializer.sample_rate), self.greeting)
        except ProtocolViolation as error:
            log.warning("audiosocket %s: %s", self.call_id or "?", error)
            await self.write(self.serializer.encode_error())
        except TimeoutError:
            pass  # the caller never said which call
        except Exception as error:  # refused (capacity, a duplicate UUID) or broken: this call only
            log.warning("audiosocket %s: %s", self.call_id or "?", error)
            await self.write(self.serializer.encode_error())
        finally:
            await self.close()

    async def read(self) -> Message | None:
        try:
            header = await self.reader.readexactly(HEADER.size)
            _, length = HEADER.unpack(header)
            return header + await self.reader.readexactly(length) if length else header
        except (asyncio.IncompleteReadError, ConnectionError):
            return None  # the caller hung up without a goodbye

    async def receive(self) -> None:
        self.act(self._first)
        await super().receive()

    async def write(self, message: Message) -> None:
        with contextlib.suppress(ConnectionError):
            self.writer.write(message)
            await self.writer.drain()

    async def ended(self, by: EndedBy, error: BaseException | None) -> None:
        if by is EndedBy.FAR_END:
            if isinstance(error, ProtocolViolation):
                log.warning("audiosocket %s: %s", self.call_id, error)
                await self.write(self.serializer.encode_error())
            return
        log.info("audiosocket %s: hanging up (%s)", self.call_id, self.session.close_reason or "call ended")
        await self.write(self.serializer.encode_hangup())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def _first_audio(self) -> Inbound | None:
        """The first frame after the UUID, to learn the caller's audio rate."""
        try:
            async with asyncio.timeout(FIRST_AUDIO_WAIT):
                message = await self.read()
        except TimeoutError:
            return None
        first = Stop() if message is None else self.serializer.decode(message)
        if isinstance(first, Media):
            self.serializer.sample_rate = first.sample_rate
        return first


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
