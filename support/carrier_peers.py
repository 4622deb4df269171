"""Protocol simulators for the binary-PCM carriers: Vonage, jambonz, FreeSWITCH's mod_audio_stream, Asterisk's chan_websocket.

Each behaves as its documentation says the far end does: it opens the
socket, says which call this is, sends 20 ms of caller audio every 20 ms,
plays what it is sent at real time (none of them paces the sender), echoes
marks once the audio before them has played, and drops what it holds on a
clear. What differs per dialect is only the shape of those messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
import websockets

from media.g711 import ulaw_decode, ulaw_encode
from media.pcm import from_s16le, to_int16, to_s16le
from support.far_end_playout import FarEndPlayout, ticks


@dataclass(frozen=True)
class Played:
    """One outbound message as the far end reads it."""

    audio: np.ndarray | None = None
    mark: str | None = None
    clear: bool = False


class CarrierPeer:
    """The far end's socket, clock and playout; subclasses say how their dialect spells each thing."""

    subprotocols: tuple[str, ...] = ()

    def __init__(self, ws_url: str, *, rate: int = 16000, parameters: dict[str, str] | None = None) -> None:
        self.ws_url = ws_url
        self.rate = rate
        self.frame = rate // 50  # 20 ms
        self.parameters = parameters or {}
        self.call_id = str(uuid.uuid4())
        self.received: list[tuple[float, np.ndarray]] = []  # (arrival, audio) of each audio message
        self.played: list[tuple[float, np.ndarray]] = []  # (playout time, 20 ms of audio)
        self.marks_echoed: list[tuple[float, str]] = []
        self.clears: list[float] = []
        self.caller_audio: deque[np.ndarray] = deque()
        self.speech_sent_at: float | None = None
        self.closed = asyncio.Event()
        self.socket = None
        self.playout = FarEndPlayout(self.frame)
        self._tasks: list[asyncio.Task] = []

    # The dialect.
    def opening(self) -> list[str | bytes]:
        raise NotImplementedError

    def read(self, message: str | bytes) -> Played | None:
        raise NotImplementedError

    def echo(self, name: str) -> str | None:
        """The message that says a mark was played."""
        raise NotImplementedError

    def dtmf_message(self, digit: str) -> str:
        raise NotImplementedError

    def encode(self, samples: np.ndarray) -> bytes:
        return to_s16le(samples)

    # The far end's behaviour.
    async def connect(self) -> None:
        self.socket = await websockets.connect(self.ws_url, subprotocols=list(self.subprotocols) or None)
        for message in self.opening():
            await self.socket.send(message)
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._tick())]

    async def say(self, samples: np.ndarray) -> None:
        """Caller speech (float at the call's rate), sent 20 ms a tick from the next tick on."""
        for start in range(0, len(samples) - self.frame + 1, self.frame):
            self.caller_audio.append(samples[start : start + self.frame])

    async def dtmf(self, digit: str) -> None:
        await self.socket.send(self.dtmf_message(digit))

    async def send_raw(self, message: str | bytes) -> None:
        await self.socket.send(message)

    async def close(self) -> None:
        """Hang up: the socket closes mid-call, as every one of these carriers ends a call."""
        for task in self._tasks:
            task.cancel()
        if self.socket is not None:
            await self.socket.close()

    def heard(self) -> np.ndarray:
        return np.concatenate([audio for _, audio in self.played]) if self.played else np.zeros(0, np.float32)

    async def _read(self) -> None:
        try:
            async for message in self.socket:
                played = self.read(message)
                if played is None:
                    continue
                if played.audio is not None:
                    self.received.append((time.monotonic(), played.audio))
                    self.playout.add(played.audio)
                elif played.mark is not None:
                    self.playout.add(played.mark)
                elif played.clear:
                    self.clears.append(time.monotonic())
                    await self._cleared(self.playout.clear())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def _cleared(self, marks: list[str]) -> None:
        """What the dialect does with marks a clear dropped: by default, nothing."""

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append((time.monotonic(), name))
        message = self.echo(name)
        if message is not None:
            await self.socket.send(message)

    async def _tick(self) -> None:
        async for _, now in ticks():
            self.played.append((now, await self.playout.play(self._echo)))
            inbound = np.zeros(self.frame, np.float32)
            if self.caller_audio:
                if self.speech_sent_at is None:
                    self.speech_sent_at = now
                inbound = self.caller_audio.popleft()
            try:
                await self.socket.send(self.encode(inbound))
            except websockets.ConnectionClosed:
                return


class VonagePeer(CarrierPeer):
    """Vonage's Voice API WebSocket: ``websocket:connected`` with the endpoint's headers, binary L16."""

    def opening(self) -> list[str | bytes]:
        connected = {"event": "websocket:connected", "content-type": f"audio/l16;rate={self.rate}"}
        return [json.dumps(connected | self.parameters)]

    def read(self, message: str | bytes) -> Played | None:
        if isinstance(message, bytes):
            return Played(audio=from_s16le(message))
        fields = json.loads(message)
        if fields.get("action") == "notify":
            return Played(mark=fields["payload"]["mark"])
        if fields.get("action") == "clear":
            return Played(clear=True)
        return None

    def echo(self, name: str) -> str:
        return json.dumps({"event": "websocket:notify", "payload": {"mark": name}})

    async def _cleared(self, marks: list[str]) -> None:
        await self.socket.send(json.dumps({"event": "websocket:cleared"}))

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260})


class JambonzPeer(CarrierPeer):
    """jambonz's ``listen`` with ``bidirectionalAudio: {streaming: true}`` and ``passDtmf``."""

    subprotocols = ("audio.jambonz.org",)

    def opening(self) -> list[str | bytes]:
        call = {"callSid": self.call_id, "from": "+15083084809", "to": "+15083728299", "direction": "inbound"}
        return [json.dumps(call | {"sampleRate": self.rate, "mixType": "mono", "metadata": self.parameters})]

    def read(self, message: str | bytes) -> Played | None:
        if isinstance(message, bytes):
            return Played(audio=from_s16le(message))
        fields = json.loads(message)
        if fields.get("type") == "mark":
            return Played(mark=fields["data"]["name"])
        if fields.get("type") == "killAudio":
            return Played(clear=True)
        return None

    def echo(self, name: str) -> str:
        return json.dumps({"type": "mark", "data": {"name": name, "event": "playout"}})

    async def _cleared(self, marks: list[str]) -> None:
        for name in marks:  # jambonz reports the marks a killAudio dropped as cleared
            await self.socket.send(json.dumps({"type": "mark", "data": {"name": name, "event": "cleared"}}))

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "dtmf": digit, "duration": "250"})


class FreeSwitchPeer(CarrierPeer):
    """mod_audio_stream: the command's metadata first, binary L16 in, ``streamAudio`` JSON back; no marks, no DTMF."""

    def opening(self) -> list[str | bytes]:
        return [json.dumps({"uuid": self.call_id, "sampleRate": self.rate} | self.parameters)]

    def read(self, message: str | bytes) -> Played | None:
        fields = json.loads(message)
        if fields.get("type") != "streamAudio":
            return None
        data = fields["data"]
        assert data["audioDataType"] == "raw" and data["sampleRate"] == self.rate
        return Played(audio=from_s16le(base64.b64decode(data["audioData"])))

    def echo(self, name: str) -> None:
        return None

    def dtmf_message(self, digit: str) -> str:
        raise NotImplementedError("mod_audio_stream sends no DTMF on its socket")


class ChanWebSocketPeer(CarrierPeer):
    """Asterisk's chan_websocket dialling out to us with ``c(<format>)f(json)``: MEDIA_START, binary media."""

    def __init__(self, ws_url: str, *, format: str = "slin16", **options) -> None:
        super().__init__(ws_url, rate=8000 if format in ("ulaw", "slin") else 16000, **options)
        self.format = format

    def opening(self) -> list[str | bytes]:
        size = self.frame if self.format == "ulaw" else self.frame * 2
        variables = {name.upper(): value for name, value in self.parameters.items()}
        start = {"event": "MEDIA_START", "connection_id": self.call_id, "channel": f"WebSocket/{self.call_id}",
                 "channel_id": "pbx1-" + self.call_id[:8], "format": self.format, "optimal_frame_size": size,
                 "ptime": 20, "channel_variables": variables}  # fmt: skip
        return [json.dumps(start)]

    def encode(self, samples: np.ndarray) -> bytes:
        return ulaw_encode(to_int16(samples)) if self.format == "ulaw" else to_s16le(samples)

    def read(self, message: str | bytes) -> Played | None:
        if isinstance(message, bytes):
            audio = ulaw_decode(message) / np.float32(32768.0) if self.format == "ulaw" else from_s16le(message)
            return Played(audio=audio)
        fields = json.loads(message)
        if fields.get("command") == "MARK_MEDIA":
            return Played(mark=fields["correlation_id"])
        if fields.get("command") == "FLUSH_MEDIA":
            return Played(clear=True)
        return None

    def echo(self, name: str) -> str:
        return json.dumps({"event": "MEDIA_MARK_PROCESSED", "channel_id": "pbx1", "correlation_id": name})

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "DTMF_END", "channel_id": "pbx1", "digit": digit})
