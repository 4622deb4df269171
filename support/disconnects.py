"""Callers that hang up mid-stream on every transport, and the figures a leak would grow.

Each ``drop_*`` coroutine starts real work on the gateway (speech being
synthesized and sent), waits for the first audio, then vanishes without a
goodbye: the TCP connection is aborted, or for WebRTC the peer connection is
closed without the WHIP DELETE. :class:`Figures` reads what a leak shows in:
the event loop's tasks (``gateway_asyncio_tasks``), and the gateway process's
threads, open file descriptors and resident memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import websockets

from gateway.client import WebRTCCall
from support.telephony_peers import TwilioPeer

# About six seconds of speech: every caller hangs up long before the end.
TEXT = "This sentence keeps the voice busy for a while, so every caller hangs up while it is still being spoken."
FIRST_AUDIO_TIMEOUT = 30.0


async def drop_http_stream(url: str) -> None:
    """``POST /v1/tts/stream``, read the first audio bytes, abort the connection."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    body = json.dumps({"text": TEXT}).encode()
    head = f"POST /v1/tts/stream HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        writer.write(head.encode() + body)
        async with asyncio.timeout(FIRST_AUDIO_TIMEOUT):
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"/v1/tts/stream answered {status!r}")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(1)
    finally:
        writer.transport.abort()


async def drop_ws_tts(url: str) -> None:
    """``/ws/v1/tts``: send the config, take the first audio frame, abort."""
    socket = await websockets.connect(_ws(url, "/ws/v1/tts"), max_size=None)
    try:
        await socket.send(json.dumps({"text": TEXT}))
        await _first_binary(socket)
    finally:
        socket.transport.abort()


async def drop_ws_session(url: str) -> None:
    """``/ws/v1/session`` mid-utterance: the first words are in the query, abort at the first audio."""
    socket = await websockets.connect(_ws(url, "/ws/v1/session?" + urllib.parse.urlencode({"text": TEXT})), max_size=None)
    try:
        await _first_binary(socket)
    finally:
        socket.transport.abort()


async def drop_webrtc(url: str) -> None:
    """A WebRTC call that closes its peer connection once speech starts, without the WHIP DELETE."""
    call = WebRTCCall(url, text=TEXT)
    try:
        await call.connect()  # the track carries silence from the start: wait for the speech itself
        await call.wait_for("utterance.first_audio", timeout=FIRST_AUDIO_TIMEOUT)
    finally:
        await call.close()


async def drop_twilio(url: str) -> None:
    """A Twilio Media Stream whose line goes dead mid-call: no ``stop`` event, no close frame."""
    peer = TwilioPeer(_ws(url, "/v1/telephony/twilio/stream"), parameters={"text": TEXT})
    await peer.connect()
    try:
        async with asyncio.timeout(FIRST_AUDIO_TIMEOUT):
            while not peer.received:
                await asyncio.sleep(0.01)
    finally:
        peer._socket.transport.abort()  # the peer has no abrupt hang-up of its own
        await peer.close()


DROPS: dict[str, Callable[[str], Awaitable[None]]] = {
    "http stream": drop_http_stream,
    "ws tts": drop_ws_tts,
    "ws session": drop_ws_session,
    "webrtc": drop_webrtc,
    "twilio": drop_twilio,
}


async def drop_many(url: str, count: int, *, concurrency: int = 4) -> dict[str, int]:
    """``count`` hang-ups spread evenly over the transports, ``concurrency`` at a time; failures by transport."""
    kinds = list(DROPS)
    plan = [kinds[index % len(kinds)] for index in range(count)]
    failures = dict.fromkeys(kinds, 0)

    async def worker() -> None:
        while plan:
            kind = plan.pop()
            try:
                await DROPS[kind](url)
            except Exception:
                failures[kind] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


@dataclass(frozen=True)
class Figures:
    """What a leak grows, in the gateway process (its engine workers are separate processes)."""

    tasks: int
    threads: int
    fds: int
    rss_mb: float

    @classmethod
    def read(cls, url: str, pid: int) -> Figures:
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
        return cls(
            tasks=int(metric(url, "gateway_asyncio_tasks")),
            threads=int(status["Threads"]),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        )

    def growth(self, before: Figures) -> Figures:
        return Figures(self.tasks - before.tasks, self.threads - before.threads, self.fds - before.fds, self.rss_mb - before.rss_mb)


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples (all labels) on ``/metrics``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def settle(url: str, timeout: float = 60.0) -> None:
    """Wait until nothing is live (sessions, syntheses, engine work) and the task count holds still."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        idle = sum(metric(url, name) for name in ("gateway_active_sessions", "gateway_active_syntheses", "gateway_engine_busy")) == 0
        tasks = metric(url, "gateway_asyncio_tasks")
        if idle and tasks == previous:
            return
        previous = tasks if idle else None
        time.sleep(0.5)
    raise TimeoutError(f"the gateway at {url} did not go idle within {timeout} s")


async def _first_binary(socket) -> None:
    """Read until the first audio frame (binary) arrives."""
    async with asyncio.timeout(FIRST_AUDIO_TIMEOUT):
        while not isinstance(await socket.recv(), bytes):
            pass


def _ws(url: str, path: str) -> str:
    return url.replace("http", "ws", 1) + path
