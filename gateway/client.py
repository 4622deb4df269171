"""A Python bot client: call the gateway over WebRTC or ``/ws/v1/session``, stream text in, record what it hears.

As a library::

    async with WebRTCCall("http://127.0.0.1:8000", voice="joe") as call:
        await call.say("Hello there, ", flush=False)
        await call.say("how can I help?", flush=True)
        await call.wait_for("utterance.done")
        call.save_wav("heard.wav")

From the shell::

    python -m gateway.client --url http://127.0.0.1:8000 --transport webrtc \\
        --text "Hello there, how can I help?" --words-per-second 8 --out heard.wav
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from media.containers import wav_bytes
from media.opus import OpusDecoder
from media.pcm import from_s16le
from signaling.webrtc import restrict_host_addresses


class Call:
    """What every transport's call has: events, recorded audio with arrival times, control messages."""

    sample_rate = 48000

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []  # monotonic time each audio frame arrived
        self.session_id: str | None = None
        self._event_arrived = asyncio.Event()

    async def say(self, text: str, *, flush: bool = False) -> None:
        await self.send({"type": "text", "text": text, "flush": flush})

    async def flush(self) -> None:
        await self.send({"type": "flush"})

    async def cancel(self) -> None:
        await self.send({"type": "cancel"})

    async def mark(self, name: str) -> None:
        await self.send({"type": "mark", "name": name})

    async def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def wait_for(self, kind: str, timeout: float = 30.0, **fields: Any) -> dict:
        """The first event of ``kind`` (with these field values), waiting for it if needed."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if event.get("type") == kind and all(event.get(k) == v for k, v in fields.items()):
                        return event
                seen = len(self.events)
                self._event_arrived.clear()
                await self._event_arrived.wait()

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    def save_wav(self, path: str | Path) -> None:
        Path(path).write_bytes(wav_bytes(self.audio(), self.sample_rate))

    def _event(self, event: dict) -> None:
        if event.get("type") == "session.created":
            self.session_id = event["session"]["session_id"]
        self.events.append(event)
        self._event_arrived.set()

    def _audio(self, samples: np.ndarray) -> None:
        self.arrivals.append(time.monotonic())
        self.chunks.append(samples)

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WebRTCCall(Call):
    """A call over WebRTC: audio on a receive-only track, control and events on a data channel."""

    def __init__(self, url: str, *, voice: str | None = None, text: str | None = None, ice_servers: list | None = None) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.voice = voice
        self.text = text
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        self._channel = None
        self._open = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def connect(self) -> None:
        if urllib.parse.urlsplit(self.url).hostname in ("127.0.0.1", "localhost", "::1"):
            restrict_host_addresses(["127.0.0.1"])  # aioice skips loopback unless told
        self.pc.addTransceiver("audio", direction="recvonly")
        self._channel = self.pc.createDataChannel("session")
        self._channel.on("open", self._open.set)
        self._channel.on("message", lambda message: self._event(json.loads(message)))
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._listen(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "voice": self.voice, "text": self.text}
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(self.url + "/v1/webrtc/offer", json=body)
            response.raise_for_status()
            answer = response.json()
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        async with asyncio.timeout(15):
            await self._open.wait()

    async def send(self, message: dict[str, Any]) -> None:
        await self._open.wait()
        self._channel.send(json.dumps(message))

    async def _listen(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
                self._audio((pcm / 32768.0).astype(np.float32))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


class WebSocketCall(Call):
    """A call over ``/ws/v1/session``: JSON control and events, binary audio frames."""

    def __init__(self, url: str, *, voice: str | None = None, text: str | None = None, codec: str = "pcm", sample_rate: int = 24000) -> None:
        super().__init__()
        query = {"format": codec, "sample_rate": sample_rate, "voice": voice, "text": text}
        self.ws_url = url.rstrip("/").replace("http", "ws", 1) + "/ws/v1/session?" + urllib.parse.urlencode(
            {k: v for k, v in query.items() if v is not None}
        )
        self.sample_rate = 48000 if codec == "opus" else sample_rate
        self._decoder = OpusDecoder() if codec == "opus" else None
        self._socket = None
        self._reader: asyncio.Task | None = None

    async def connect(self) -> None:
        self._socket = await websockets.connect(self.ws_url, max_size=None)
        self._event(json.loads(await self._socket.recv()))
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self._socket:
                if isinstance(message, bytes):
                    self._audio(self._decoder.decode(message) if self._decoder else from_s16le(message))
                else:
                    self._event(json.loads(message))

    async def send(self, message: dict[str, Any]) -> None:
        await self._socket.send(json.dumps(message))

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()


async def _run(args: argparse.Namespace) -> None:
    call_type = WebRTCCall if args.transport == "webrtc" else WebSocketCall
    async with call_type(args.url, voice=args.voice) as call:
        words = args.text.split(" ")
        for index, word in enumerate(words):
            await call.say(word + (" " if index < len(words) - 1 else ""), flush=index == len(words) - 1)
            if args.words_per_second:
                await asyncio.sleep(1 / args.words_per_second)
        first = await call.wait_for("utterance.first_audio", timeout=60)
        done = await call.wait_for("utterance.done", timeout=120)
        await asyncio.sleep(0.3)  # the last frames are still on their way
        call.save_wav(args.out)
        print(f"session {call.session_id}: first audio {first['latency_ms']} ms after its text; "
              f"{done['audio_ms']} ms of speech; wrote {args.out}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--transport", choices=("webrtc", "ws"), default="webrtc")
    parser.add_argument("--text", required=True)
    parser.add_argument("--voice")
    parser.add_argument("--words-per-second", type=float, default=0.0, help="stream the text word by word (0: at once)")
    parser.add_argument("--out", default="heard.wav")
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
