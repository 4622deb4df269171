"""Protocol simulators for telephony: Twilio's side of a Media Stream and Asterisk's side of an AudioSocket.

They behave like the real far ends: Twilio plays what it is sent at real
time (it does not pace the sender), echoes marks once the audio before them
has played, obeys ``clear`` (returning pending marks), and streams caller
audio every 20 ms; Asterisk sends 20 ms slin frames and expects paced ones.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
import time
import uuid
from collections import deque

import numpy as np
import websockets

from media.g711 import ulaw_decode, ulaw_encode
from media.pcm import to_int16
from signaling.twilio_signature import twilio_signature
from support.far_end_playout import ticks

FRAME = 160  # 20 ms of 8 kHz


class TwilioPeer:
    """Twilio's end of a bidirectional Media Stream, with a real-time playout and optional line echo."""

    def __init__(
        self,
        ws_url: str,
        *,
        parameters: dict[str, str] | None = None,
        auth_token: str | None = None,
        echo_db: float | None = None,
        echo_delay_frames: int = 3,
    ) -> None:
        self.ws_url = ws_url
        self.parameters = parameters or {}
        self.auth_token = auth_token
        self.echo_gain = None if echo_db is None else 10 ** (echo_db / 20)
        self.echo_delay_frames = echo_delay_frames
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.received: list[tuple[float, bytes]] = []  # (arrival, μ-law payload)
        self.played: list[tuple[float, np.ndarray]] = []  # (playout time, 20 ms of audio)
        self.marks_echoed: list[tuple[float, str]] = []
        self.clears: list[float] = []
        self.caller_audio: deque[np.ndarray] = deque()  # 20 ms frames the caller will say
        self.speech_sent_at: float | None = None  # when the first frame of caller speech went out
        self._queue: deque[bytes | str] = deque()  # what Twilio still has to play: audio or mark names
        self._pending = b""
        self._socket = None
        self._sequence = itertools.count(1)
        self._tasks: list[asyncio.Task] = []

    async def connect(self) -> None:
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, self.ws_url)
        self._socket = await websockets.connect(self.ws_url, additional_headers=headers)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": str(next(self._sequence)),
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": self.call_sid,
                    "tracks": ["inbound", "outbound"],
                    "customParameters": self.parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._tick())]

    async def say(self, samples: np.ndarray) -> None:
        """Caller speech (8 kHz float) to be sent from the next tick on, 20 ms at a time."""
        for start in range(0, len(samples) - FRAME + 1, FRAME):
            self.caller_audio.append(samples[start : start + FRAME])

    async def dtmf(self, digit: str) -> None:
        await self._send({"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}})

    async def send_raw(self, text: str) -> None:
        await self._socket.send(text)

    async def stop(self) -> None:
        await self._send({"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}})
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._socket is not None:
            await self._socket.close()

    def heard(self) -> np.ndarray:
        return np.concatenate([audio for _, audio in self.played]) if self.played else np.zeros(0, np.float32)

    async def _send(self, message: dict) -> None:
        await self._socket.send(json.dumps(message))

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            if message["event"] == "media":
                payload = base64.b64decode(message["media"]["payload"])
                self.received.append((time.monotonic(), payload))
                self._queue.append(payload)
            elif message["event"] == "mark":
                self._queue.append(message["mark"]["name"])
            elif message["event"] == "clear":
                self.clears.append(time.monotonic())
                names = [item for item in self._queue if isinstance(item, str)]
                self._queue.clear()
                self._pending = b""
                for name in names:  # Twilio returns the marks a clear discarded
                    await self._echo_mark(name)

    async def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append((time.monotonic(), name))
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _tick(self) -> None:
        """Every 20 ms: play 20 ms of what was sent (echoing marks reached) and send 20 ms of caller audio."""
        async for index, now in ticks():
            frame = await self._play_one()
            self.played.append((now, frame))
            inbound = np.zeros(FRAME, np.float32)
            if self.echo_gain is not None and len(self.played) > self.echo_delay_frames:
                inbound += self.played[-1 - self.echo_delay_frames][1] * self.echo_gain
            if self.caller_audio:
                if self.speech_sent_at is None:
                    self.speech_sent_at = now
                inbound += self.caller_audio.popleft()
            await self._send(
                {
                    "event": "media",
                    "sequenceNumber": str(next(self._sequence)),
                    "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                              "payload": base64.b64encode(ulaw_encode(to_int16(inbound))).decode()},
                    "streamSid": self.stream_sid,
                }
            )  # fmt: skip

    async def _play_one(self) -> np.ndarray:
        data = self._pending
        while len(data) < FRAME and self._queue:
            item = self._queue[0]
            if isinstance(item, str):
                if data:
                    break  # play up to the mark first
                self._queue.popleft()
                await self._echo_mark(item)
                continue
            data += self._queue.popleft()
        played, self._pending = data[:FRAME], data[FRAME:]
        audio = ulaw_decode(played) / np.float32(32768.0) if played else np.zeros(0, np.float32)
        return np.concatenate([audio, np.zeros(FRAME - len(audio), np.float32)])


class AsteriskPeer:
    """Asterisk's end of an AudioSocket connection."""

    def __init__(self, host: str, port: int, *, kind: int = 0x10) -> None:
        self.host, self.port, self.kind = host, port, kind
        self.call_id = uuid.uuid4()
        self.frames: list[tuple[float, int, bytes]] = []
        self.closed = asyncio.Event()
        self._reader = self._writer = None
        self._tasks: list[asyncio.Task] = []

    @property
    def rate(self) -> int:
        return {0x10: 8000, 0x12: 16000, 0x13: 24000}[self.kind]

    async def connect(self, *, send_audio: bool = True) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.send(0x01, self.call_id.bytes)
        self._tasks = [asyncio.ensure_future(self._read())]
        if send_audio:
            self._tasks.append(asyncio.ensure_future(self._silence()))

    def send(self, kind: int, payload: bytes = b"") -> None:
        self._writer.write(struct.pack(">BH", kind, len(payload)) + payload)

    async def hangup(self) -> None:
        self.send(0x00)
        await self._writer.drain()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._writer.close()

    def audio(self) -> np.ndarray:
        pcm = b"".join(payload for _, kind, payload in self.frames if kind == self.kind)
        return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0

    async def _silence(self) -> None:
        frame = bytes(self.rate // 50 * 2)
        async for _ in ticks():
            self.send(self.kind, frame)

    async def _read(self) -> None:
        try:
            while True:
                kind, length = struct.unpack(">BH", await self._reader.readexactly(3))
                payload = await self._reader.readexactly(length) if length else b""
                self.frames.append((time.monotonic(), kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
