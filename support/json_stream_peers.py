"""Protocol simulators for the JSON media-stream carriers: Telnyx, Plivo (and Vobiz), Exotel.

Each behaves as its carrier's documentation says: it opens the socket, says
which call this is and in what format, sends caller audio as base64 in
``media`` messages at real time (20 ms each; Exotel about every 100 ms), plays
what it is sent at real time (none of them paces the sender), reports each
mark (Plivo: checkpoint) once the audio before it has played, and drops what
it holds on a clear. Telnyx may be told to deliver frames out of order, as its
docs warn it can. SignalWire is Twilio's dialect: ``TwilioPeer`` plays it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
import websockets

from signaling.serializers.json_media import Codec
from support.far_end_playout import FarEndPlayout, ticks


@dataclass(frozen=True)
class Outbound:
    """One message from the gateway as the far end reads it."""

    audio: bytes | None = None
    mark: str | None = None
    clear: bool = False


class JsonStreamPeer:
    """The far end's socket, clock and playout; subclasses spell the dialect's messages."""

    chunk_frames = 1  # 20 ms frames per caller media message
    marks_on_clear = True  # a clear reports the marks it discarded (Twilio's way)

    def __init__(
        self, ws_url: str, *, codec: Codec = Codec.ULAW, rate: int = 8000, parameters: dict[str, str] | None = None
    ) -> None:
        self.ws_url = ws_url
        self.codec = codec
        self.rate = rate
        self.frame = rate // 50
        self.parameters = parameters or {}
        self.call_id = str(uuid.uuid4())
        self.stream_id = str(uuid.uuid4())
        self.received: list[tuple[float, bytes]] = []  # (arrival, payload) of each audio message
        self.played: list[tuple[float, np.ndarray]] = []  # (playout time, 20 ms of audio)
        self.marks_echoed: list[tuple[float, str]] = []
        self.clears: list[float] = []
        self.caller_audio: deque[np.ndarray] = deque()
        self.speech_sent_at: float | None = None
        self.socket = None
        self.sequence = itertools.count(1)
        self.playout = FarEndPlayout(self.frame)
        self._tasks: list[asyncio.Task] = []

    # The dialect.
    def start_message(self) -> dict:
        raise NotImplementedError

    def media_message(self, payload: str, chunk: int) -> dict:
        raise NotImplementedError

    def dtmf_message(self, digit: str) -> dict:
        raise NotImplementedError

    def stop_message(self) -> dict | None:
        raise NotImplementedError

    def read(self, message: dict) -> Outbound | None:
        """A gateway message as Twilio spells it (Telnyx and Exotel do too): ``media``, ``mark``, ``clear``."""
        match message.get("event"):
            case "media":
                return Outbound(audio=base64.b64decode(message["media"]["payload"]))
            case "mark":
                return Outbound(mark=message["mark"]["name"])
            case "clear":
                return Outbound(clear=True)
        return None

    def echo(self, name: str) -> dict:
        raise NotImplementedError

    def cleared(self) -> dict | None:
        return None

    def deliver(self, messages: list[dict]) -> list[dict]:
        """The order caller media leaves in (Telnyx's may be shuffled)."""
        return messages

    # The far end's behaviour.
    async def connect(self, headers: dict[str, str] | None = None) -> None:
        self.socket = await websockets.connect(self.ws_url, additional_headers=headers or {})
        await self.send({"event": "connected", "version": "1.0.0"})
        await self.send(self.start_message())
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._tick())]

    async def say(self, samples: np.ndarray) -> None:
        """Caller speech (float at the call's rate), sent from the next message on."""
        for start in range(0, len(samples) - self.frame + 1, self.frame):
            self.caller_audio.append(samples[start : start + self.frame])

    async def dtmf(self, digit: str) -> None:
        await self.send(self.dtmf_message(digit))

    async def send(self, message: dict) -> None:
        await self.socket.send(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.socket.send(text)

    async def stop(self) -> None:
        """Hang up as the carrier does: a stop (where it sends one), then the socket closes."""
        if (message := self.stop_message()) is not None:
            await self.send(message)
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.socket is not None:
            await self.socket.close()

    def _next(self) -> str:
        """The next sequence number, as the string Telnyx and Exotel send."""
        return str(next(self.sequence))

    def heard(self) -> np.ndarray:
        return np.concatenate([audio for _, audio in self.played]) if self.played else np.zeros(0, np.float32)

    def sent_audio(self) -> np.ndarray:
        return np.concatenate([self.codec.decode(payload) for _, payload in self.received] or [np.zeros(0, np.float32)])

    async def _read(self) -> None:
        async for raw in self.socket:
            outbound = self.read(json.loads(raw))
            if outbound is None:
                continue
            if outbound.audio is not None:
                self.received.append((time.monotonic(), outbound.audio))
                self.playout.add(self.codec.decode(outbound.audio))
            elif outbound.mark is not None:
                self.playout.add(outbound.mark)
            elif outbound.clear:
                self.clears.append(time.monotonic())
                names = self.playout.clear()
                if (message := self.cleared()) is not None:
                    await self.send(message)
                for name in names if self.marks_on_clear else ():
                    await self._echo(name)

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append((time.monotonic(), name))
        await self.send(self.echo(name))

    async def _tick(self) -> None:
        """Every 20 ms: play 20 ms of what was sent; every ``chunk_frames`` ticks, send that much caller audio."""
        outgoing: list[np.ndarray] = []
        chunks = itertools.count(1)
        async for _, now in ticks():
            self.played.append((now, await self.playout.play(self._echo)))
            frame = np.zeros(self.frame, np.float32)
            if self.caller_audio:
                if self.speech_sent_at is None:
                    self.speech_sent_at = now + 0.02 * (self.chunk_frames - 1 - len(outgoing))  # when its chunk leaves
                frame = self.caller_audio.popleft()
            outgoing.append(frame)
            if len(outgoing) == self.chunk_frames:
                payload = base64.b64encode(self.codec.encode(np.concatenate(outgoing))).decode()
                outgoing = []
                for message in self.deliver([self.media_message(payload, next(chunks))]):
                    await self.send(message)


TELNYX_ENCODINGS = {Codec.ULAW: "PCMU", Codec.ALAW: "PCMA", Codec.L16: "L16"}


class TelnyxPeer(JsonStreamPeer):
    """Telnyx media streaming; ``swap_every`` > 0 delivers each such pair of media frames the other way round."""

    def __init__(self, *args, swap_every: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.swap_every = swap_every
        self._held: dict | None = None

    def start_message(self) -> dict:
        media_format = {"encoding": TELNYX_ENCODINGS[self.codec], "sample_rate": self.rate, "channels": 1}
        start = {"user_id": str(uuid.uuid4()), "call_control_id": "v3:" + self.call_id, "media_format": media_format,
                 "custom_parameters": self.parameters}  # fmt: skip
        return {"event": "start", "sequence_number": self._next(), "start": start, "stream_id": self.stream_id}

    def media_message(self, payload: str, chunk: int) -> dict:
        media = {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20), "payload": payload}
        return {"event": "media", "sequence_number": self._next(), "media": media, "stream_id": self.stream_id}

    def deliver(self, messages: list[dict]) -> list[dict]:
        if not self.swap_every:
            return messages
        (message,) = messages
        chunk = int(message["media"]["chunk"])
        if self._held is None and chunk % self.swap_every == 0:
            self._held = message  # held back: the next frame overtakes it
            return []
        held, self._held = self._held, None
        return [message] if held is None else [message, held]

    def dtmf_message(self, digit: str) -> dict:
        return {"event": "dtmf", "sequence_number": self._next(), "stream_id": self.stream_id,
                "dtmf": {"digit": digit}}  # fmt: skip

    def stop_message(self) -> dict:
        stop = {"user_id": str(uuid.uuid4()), "call_control_id": "v3:" + self.call_id}
        return {"event": "stop", "sequence_number": self._next(), "stop": stop, "stream_id": self.stream_id}

    def echo(self, name: str) -> dict:
        return {"event": "mark", "sequence_number": self._next(), "stream_id": self.stream_id,
                "mark": {"name": name}}  # fmt: skip


PLIVO_CONTENT_TYPES = {Codec.ULAW: "audio/x-mulaw", Codec.S16LE: "audio/x-l16"}


class PlivoPeer(JsonStreamPeer):
    """Plivo audio streams; ``vobiz`` sends no stop (its socket just closes)."""

    marks_on_clear = False  # a checkpoint is reported only if the audio before it played

    def __init__(self, *args, vobiz: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.vobiz = vobiz
        self.played_content: list[tuple[str, int]] = []  # (contentType, sampleRate) of each playAudio

    def start_message(self) -> dict:
        media_format = {"encoding": PLIVO_CONTENT_TYPES[self.codec], "sampleRate": self.rate}
        start = {"callId": self.call_id, "streamId": self.stream_id, "accountId": "MA" + "0" * 18,
                 "tracks": ["inbound"], "mediaFormat": media_format}  # fmt: skip
        return {"event": "start", "sequenceNumber": 0, "start": start, "extra_headers": self.parameters}

    def media_message(self, payload: str, chunk: int) -> dict:
        media = {"track": "inbound", "timestamp": str((chunk - 1) * 20), "chunk": chunk, "payload": payload}
        return {"event": "media", "sequenceNumber": next(self.sequence), "streamId": self.stream_id, "media": media}

    def dtmf_message(self, digit: str) -> dict:
        return {"event": "dtmf", "sequenceNumber": next(self.sequence), "streamId": self.stream_id,
                "dtmf": {"track": "inbound", "digit": digit}}  # fmt: skip

    def stop_message(self) -> dict | None:
        if self.vobiz:
            return None
        return {"event": "stop", "sequenceNumber": next(self.sequence), "streamId": self.stream_id}

    def read(self, message: dict) -> Outbound | None:
        match message.get("event"):
            case "playAudio":
                media = message["media"]
                self.played_content.append((media["contentType"], media["sampleRate"]))
                return Outbound(audio=base64.b64decode(media["payload"]))
            case "checkpoint":
                return Outbound(mark=message["name"])
            case "clearAudio":
                return Outbound(clear=True)
        return None

    def echo(self, name: str) -> dict:
        return {"event": "playedStream", "sequenceNumber": next(self.sequence), "streamId": self.stream_id,
                "name": name}  # fmt: skip

    def cleared(self) -> dict:
        return {"event": "clearedAudio", "sequenceNumber": next(self.sequence), "streamId": self.stream_id}


class ExotelPeer(JsonStreamPeer):
    """Exotel's Voicebot applet: 16-bit little-endian PCM, caller audio in 100 ms messages."""

    chunk_frames = 5  # Exotel streams about every 100 ms

    def __init__(self, ws_url: str, *, rate: int = 8000, parameters: dict[str, str] | None = None) -> None:
        super().__init__(ws_url, codec=Codec.S16LE, rate=rate, parameters=parameters)

    def start_message(self) -> dict:
        media_format = {"encoding": "audio/x-raw", "sample_rate": str(self.rate), "bit_rate": "16"}
        start = {"stream_sid": self.stream_id, "call_sid": self.call_id, "account_sid": "exotel-test",
                 "from": "+919876543210", "to": "+918047491899", "custom_parameters": self.parameters,
                 "media_format": media_format}  # fmt: skip
        return {"event": "start", "sequence_number": self._next(), "stream_sid": self.stream_id, "start": start}

    def media_message(self, payload: str, chunk: int) -> dict:
        media = {"chunk": str(chunk), "timestamp": str((chunk - 1) * 100), "payload": payload}
        return {"event": "media", "sequence_number": self._next(), "stream_sid": self.stream_id, "media": media}

    def dtmf_message(self, digit: str) -> dict:
        return {"event": "dtmf", "sequence_number": self._next(), "stream_sid": self.stream_id,
                "dtmf": {"digit": digit, "duration": "100"}}  # fmt: skip

    def stop_message(self) -> dict:
        stop = {"call_sid": self.call_id, "account_sid": "exotel-test", "reason": "callended"}
        return {"event": "stop", "sequence_number": self._next(), "stream_sid": self.stream_id, "stop": stop}

    def echo(self, name: str) -> dict:
        return {"event": "mark", "sequence_number": self._next(), "stream_sid": self.stream_id,
                "mark": {"name": name}}  # fmt: skip
