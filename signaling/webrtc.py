"""Sessions over WebRTC (aiortc): an Opus track paced from the playout buffer, a data channel for control.

The outgoing track produces one 20 ms frame per tick of the wall clock, from
the session's playout buffer, or silence when it has nothing (so the RTP
clock never jumps). It encodes mono Opus at the configured bitrate itself
(aiortc's own encoder is fixed at 96 kbit/s stereo) off the event loop, and
hands aiortc ready packets. Every track's clock ticks on the same 20 ms grid,
so the frames of all calls are encoded in a few worker jobs per tick rather
than one thread hop per frame per call. Caller audio on an incoming track is
drained. A data channel, if the peer opens one, speaks the session message
vocabulary.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import json
import logging
import weakref
from collections.abc import Sequence

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCCertificate

from media.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusEncoder
from media.pacing import FrameClock
from signaling.offers import OfferError, check_offer
from signaling.protocol import ProtocolError, VoiceParser, apply, parse
from signaling.events import Subscription
from signaling.messages import Error, SessionCreated
from signaling.session import Session

log = logging.getLogger(__name__)

OUTPUT_RATE = SAMPLE_RATE  # sessions on WebRTC render at Opus's 48 kHz
ENCODE_BATCH = 8  # frames per worker job: enough to pay for the hop, few enough to spread a tick over threads
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# Events a peer's first data channel may have missed before it opened (ICE and DTLS take a second or
# so: a few utterance events and two playback events a second); beyond it the oldest are dropped and counted.
EARLY_EVENTS = 100
# aiortc's DTLS offers only ECDHE-ECDSA suites, so a peer whose certificate is RSA
# (GStreamer's webrtcbin) finds "no shared cipher" when it is the DTLS server, which
# it is whenever the gateway answers its offer. The same suites with RSA
# authentication follow the ECDSA ones: browsers (ECDSA certificates) pick as before.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer only these local addresses as ICE host candidates (process-wide; empty: all).

    aioice never offers 127.0.0.1 by itself; naming it here makes calls work
    inside a loopback-only network namespace.
    """
    if not addresses:
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def _accept_rsa_peers() -> None:
    """Give every aiortc DTLS context (ours and the bot client's) ``DTLS_CIPHERS`` (process-wide, once)."""
    create = RTCCertificate._create_ssl_context
    if getattr(create, "accepts_rsa_peers", False):
        return

    @functools.wraps(create)
    def create_accepting_rsa(self: RTCCertificate, *args, **kwargs):
        context = create(self, *args, **kwargs)
        context.set_cipher_list(DTLS_CIPHERS)
        return context

    create_accepting_rsa.accepts_rsa_peers = True
    RTCCertificate._create_ssl_context = create_accepting_rsa


_accept_rsa_peers()


def ice_servers(urls: Sequence[str]) -> list[RTCIceServer]:
    """``stun:host:port`` or ``turn:user:password@host:port[?transport=udp]`` strings to aiortc objects."""
    servers = []
    for url in urls:
        scheme, _, rest = url.partition(":")
        if "@" in rest:
            credentials, _, address = rest.rpartition("@")
            username, _, password = credentials.partition(":")
            servers.append(RTCIceServer(f"{scheme}:{address}", username=username, credential=password))
        else:
            servers.append(RTCIceServer(url))
    return servers


class _EncodeBatch:
    """Opus-encodes in worker threads the frames of every track that ticked in one event-loop iteration.

    A hop to a worker thread and back costs a third as much CPU as encoding
    the frame; one hop per ``ENCODE_BATCH`` frames makes that negligible,
    and the GIL is free while libopus encodes, so big ticks use several cores.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[OpusEncoder, np.ndarray, asyncio.Future[bytes]]] = []

    def encode(self, encoder: OpusEncoder, samples: np.ndarray) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)  # after the other tracks due in this iteration have added theirs
        future = loop.create_future()
        self._pending.append((encoder, samples, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(pending), ENCODE_BATCH):
            jobs = pending[start : start + ENCODE_BATCH]
            done = loop.run_in_executor(None, _encode_all, [(encoder, samples) for encoder, samples, _ in jobs])
            done.add_done_callback(functools.partial(_deliver, [future for *_, future in jobs]))


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EncodeBatch] = weakref.WeakKeyDictionary()


def _batch() -> _EncodeBatch:
    """The running loop's batch (one per loop: test servers run several)."""
    loop = asyncio.get_running_loop()
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = _EncodeBatch()
    return batch


def _encode_all(frames: list[tuple[OpusEncoder, np.ndarray]]) -> list[bytes]:
    return [encoder.encode(samples) for encoder, samples in frames]


def _deliver(futures: list[asyncio.Future[bytes]], done: asyncio.Future[list[bytes]]) -> None:
    for index, future in enumerate(futures):
        if future.done():
            continue  # its track stopped meanwhile
        if done.cancelled():
            future.cancel()
        elif done.exception() is not None:
            future.set_exception(done.exception())
        else:
            future.set_result(done.result()[index])


class SessionAudioTrack(MediaStreamTrack):
    """The session's speech as ready Opus packets, one per 20 ms of wall-clock time."""

    kind = "audio"

    def __init__(self, session: Session, bitrate: int) -> None:
        super().__init__()
        self.session = session
        self.clock = FrameClock(FRAME_SAMPLES / SAMPLE_RATE, aligned=True)
        self._encoder = OpusEncoder(bitrate)
        self._pts = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self.clock.tick()
        frame = self.session.buffer.read(FRAME_SAMPLES)
        self.session.on_frame(frame)
        data = await _batch().encode(self._encoder, frame.samples)
        packet = av.Packet(data)
        packet.pts = self._pts
        packet.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES
        return packet


class WebRTCPeer:
    """One peer connection carrying one session.

    A client that takes an answer and never connects (ICE or DTLS never
    completes) holds a session, and WebRTC capacity, for nothing: the session
    closes unless it connects within ``connect_timeout`` seconds.
    """

    def __init__(
        self, session: Session, parse_voice: VoiceParser, *, ice: Sequence[str], bitrate: int, connect_timeout: float
    ) -> None:
        self.session = session
        self.parse_voice = parse_voice
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(ice)))
        self.track = SessionAudioTrack(session, bitrate)
        self.inbound_frames = 0
        self.connect_timeout = connect_timeout
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        # Held for the first data channel, which opens after the offer's text was said: it sees the session from its start.
        self._early_events: Subscription | None = session.events.subscribe(maxsize=EARLY_EVENTS)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        session.on_close(self.close)

    async def answer(self, sdp: str, kind: str = "offer") -> RTCSessionDescription:
        """Answer an offer (``OfferError`` for one that cannot be), then wait ``connect_timeout`` for the client."""
        check_offer(sdp, kind)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self.pc.addTrack(self.track)
            answer = await self.pc.createAnswer()
        except Exception as error:  # aiortc checks what it applies (ICE credentials, fingerprints, codecs) as it goes
            raise OfferError(f"cannot answer the SDP offer: {str(error) or type(error).__name__}") from error
        await self.pc.setLocalDescription(answer)
        self._spawn(self._expect_connection())
        return self.pc.localDescription

    async def close(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:  # the connect timer closes its own session: cancelling it would cut the close short
                task.cancel()
        self.track.stop()
        await self.pc.close()

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expect_connection(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
        except TimeoutError:
            log.info("session %s: no connection within %g s; closing it", self.session.id, self.connect_timeout)
            await self.session.close(f"no connection within {self.connect_timeout:g} s")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._drain(track))

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Caller audio: read as it comes so nothing queues up (voice activity detection hooks in here)."""
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.inbound_frames += 1

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        events, self._early_events = self._early_events or self.session.events.subscribe(), None
        greeted = asyncio.Event()

        async def forward() -> None:
            await greeted.wait()
            async for event in events:
                if channel.readyState == "open":
                    channel.send(event.to_json())

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            try:
                reply = apply(self.session, parse(message), self.parse_voice)
            except ProtocolError as error:
                reply = self.session.events.stamped(Error(message=str(error)))
            if reply is not None and channel.readyState == "open":
                channel.send(reply.to_json())

        @channel.on("close")
        def on_close() -> None:
            events.close()

        def hello() -> None:
            created = self.session.events.stamped(SessionCreated(session=self.session.describe()))
            channel.send(json.dumps(created.to_dict()))  # ASCII-escaped, as it always was here
            greeted.set()

        self._spawn(forward())
        if channel.readyState == "open":
            hello()
        else:
            channel.on("open", hello)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("session %s peer connection %s", self.session.id, state)
        if state == "connected":
            self._connected.set()
        if state in ("failed", "closed"):
            await self.session.close(f"peer connection {state}")
