"""Telephony load: N concurrent simulated Twilio Media Streams (or Asterisk AudioSocket, Vonage, jambonz, FreeSWITCH, chan_websocket) calls.

Each call is the protocol simulator the tests use (``support/telephony_peers.py``):
Twilio's side streams 20 ms of caller audio every 20 ms (digital silence, which
the VAD skips as too quiet to be speech, or with ``--echo-db`` our own audio
coming back as line echo, which it has to examine), plays what
it is sent at real time and echoes marks; Asterisk's side sends 20 ms slin
frames. Every call hears the same paragraph (Twilio: the stream's ``text``
parameter; AudioSocket: the greeting). The gateway runs the replay engine, so
what is measured is the gateway's own cost per call: μ-law and base64 (or
slin framing), JSON, pacing, and the caller audio's voice activity detection
(barge-in is on, as by default; ``--no-barge-in`` turns it off).

Per run it prints what ``bench/sessions.py`` does, and the pacing error: how
early or late the worst 20 ms message after the initial 100 ms lead arrived
against a steady 20 ms schedule. The Twilio side plays as messages arrive,
so the lead is its only buffer.

    .venv/bin/python bench/telephony.py --ramp 10 50 100 150
    .venv/bin/python bench/telephony.py --protocol audiosocket --ramp 50 100 200
    .venv/bin/python bench/telephony.py --dialect vonage --ramp 50 100   # also jambonz, freeswitch, asterisk
    .venv/bin/python bench/telephony.py --dialect telnyx --ramp 50 100   # also plivo, exotel, signalwire

The binary-PCM dialects' simulators (``support/carrier_peers.py``) ask for
what our markup asks: Vonage and Asterisk (``c(slin16)``) at 16 kHz, jambonz
and FreeSWITCH at 8 kHz.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sessions import (  # noqa: E402
    PARAGRAPH,
    Gateway,
    Listener,
    add_bot_arguments,
    bots_for,
    engine_env,
    heard,
    ramp,
    report_capacity,
)
from support.servers import free_port  # noqa: E402

LEAD = 0.1  # the gateway's default session.lead_ms
QUIET = 0.5  # AudioSocket calls have ended when no frame came for this long


class CallBot:
    """A simulated call whose start (or greeting) carries the paragraph: connecting is speaking."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.sent: float | None = None
        self.error = ""

    async def prepare(self) -> None:
        pass

    async def speak(self) -> None:
        self.sent = time.monotonic()
        await self.peer.connect()


class EndMarkBot(CallBot):
    """A JSON media-stream call, done when the far end reports the utterance's end mark (checkpoint) played."""

    async def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(name.startswith("end-") for _, name in self.peer.marks_echoed):
            if time.monotonic() > deadline:
                self.error = "no end mark echoed"
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.peer.stop()


@dataclass(frozen=True)
class TwilioBotSpec:
    ws_url: str
    text: str = PARAGRAPH
    echo_db: float | None = None

    def make(self) -> TwilioBot:
        return TwilioBot(self)


class TwilioBot(EndMarkBot):
    """A Twilio call whose stream's ``text`` parameter is the paragraph."""

    def __init__(self, spec: TwilioBotSpec) -> None:
        from support.telephony_peers import TwilioPeer

        super().__init__(TwilioPeer(spec.ws_url, parameters={"text": spec.text}, echo_db=spec.echo_db))

    def result(self) -> dict[str, Any]:
        from media.g711 import ulaw_decode

        arrivals = [at for at, _ in self.peer.received]
        chunks = [ulaw_decode(payload) / 32768.0 for _, payload in self.peer.received]
        return heard(arrivals, chunks, self.sent, self.error)


@dataclass(frozen=True)
class AudioSocketBotSpec:
    host: str
    port: int

    def make(self) -> AudioSocketBot:
        return AudioSocketBot(self)


class AudioSocketBot(CallBot):
    """An Asterisk call; the gateway greets every call with the paragraph."""

    def __init__(self, spec: AudioSocketBotSpec) -> None:
        from support.telephony_peers import AsteriskPeer

        super().__init__(AsteriskPeer(spec.host, spec.port))

    async def finish(self, timeout: float) -> None:
        """Done when audio came and then stopped for ``QUIET`` seconds (the gateway sends frames only while it plays)."""
        deadline = time.monotonic() + timeout
        while not self.peer.frames or time.monotonic() - self.peer.frames[-1][0] < QUIET:
            if time.monotonic() > deadline or self.peer.closed.is_set():
                self.error = "the greeting did not end" if self.peer.frames else "heard nothing"
                return
            await asyncio.sleep(0.05)

    def result(self) -> dict[str, Any]:
        frames = [(at, payload) for at, kind, payload in self.peer.frames if kind == self.peer.kind]
        chunks = [np.frombuffer(payload, "<i2") / 32768.0 for _, payload in frames]
        return heard([at for at, _ in frames], chunks, self.sent, self.error)

    async def close(self) -> None:
        await self.peer.hangup()
        await self.peer.close()


@dataclass(frozen=True)
class CarrierBotSpec:
    dialect: str  # vonage, jambonz, freeswitch or asterisk: the simulators of support/carrier_peers.py
    ws_url: str
    text: str = PARAGRAPH

    def make(self) -> CarrierBot:
        return CarrierBot(self)


class CarrierBot(CallBot):
    """A binary-PCM carrier's call whose start carries the paragraph as ``text``."""

    def __init__(self, spec: CarrierBotSpec) -> None:
        from support import carrier_peers

        peers = {"vonage": carrier_peers.VonagePeer, "jambonz": carrier_peers.JambonzPeer,
                 "freeswitch": carrier_peers.FreeSwitchPeer, "asterisk": carrier_peers.ChanWebSocketPeer}  # fmt: skip
        self.marked = spec.dialect != "freeswitch"  # mod_audio_stream has no marks
        narrowband = {"rate": 8000} if spec.dialect in ("jambonz", "freeswitch") else {}  # as our markup asks
        super().__init__(peers[spec.dialect](spec.ws_url, parameters={"text": spec.text}, **narrowband))

    async def finish(self, timeout: float) -> None:
        """Done when the end mark is echoed or, without marks, when audio came and then stopped for ``QUIET`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._done():
            if time.monotonic() > deadline or self.peer.closed.is_set():
                self.error = "the greeting did not end" if self.peer.received else "heard nothing"
                return
            await asyncio.sleep(0.05)

    def _done(self) -> bool:
        if self.marked:
            return any(name.startswith("end-") for _, name in self.peer.marks_echoed)
        return bool(self.peer.received) and time.monotonic() - self.peer.received[-1][0] >= QUIET

    def result(self) -> dict[str, Any]:
        return heard([at for at, _ in self.peer.received], [audio for _, audio in self.peer.received], self.sent, self.error)

    async def close(self) -> None:
        await self.peer.close()


CARRIER_DIALECTS = ("vonage", "jambonz", "freeswitch", "asterisk")


@dataclass(frozen=True)
class JsonStreamBotSpec:
    dialect: str  # telnyx, plivo or exotel: the simulators of support/json_stream_peers.py
    ws_url: str
    text: str = PARAGRAPH

    def make(self) -> JsonStreamBot:
        return JsonStreamBot(self)


class JsonStreamBot(EndMarkBot):
    """A JSON media-stream call whose start says the paragraph: μ-law 8 kHz as our markup asks (Exotel: 16-bit PCM)."""

    def __init__(self, spec: JsonStreamBotSpec) -> None:
        from support import json_stream_peers

        peers = {"telnyx": json_stream_peers.TelnyxPeer, "plivo": json_stream_peers.PlivoPeer,
                 "exotel": json_stream_peers.ExotelPeer}  # fmt: skip
        super().__init__(peers[spec.dialect](spec.ws_url, parameters={"text": spec.text}))

    def result(self) -> dict[str, Any]:
        chunks = [self.peer.codec.decode(payload) for _, payload in self.peer.received]
        return heard([at for at, _ in self.peer.received], chunks, self.sent, self.error)


JSON_DIALECTS = ("telnyx", "plivo", "exotel", "signalwire")  # signalwire: Twilio's simulator on SignalWire's route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dialects = ("twilio", "audiosocket", *CARRIER_DIALECTS, *JSON_DIALECTS)
    parser.add_argument("--protocol", "--dialect", dest="protocol", choices=dialects,
                        default="twilio")
    parser.add_argument("--ramp", type=int, nargs="+", default=[10, 50, 100, 150, 200])
    parser.add_argument("--no-barge-in", action="store_true", help="no voice activity detection on caller audio")
    parser.add_argument("--echo-db", type=float, help="Twilio: our audio comes back on the caller's line at this level "
                        "(e.g. -25), so the VAD runs on every window while we speak; default: a quiet line")
    add_bot_arguments(parser)
    args = parser.parse_args()

    port = free_port()
    extra = {"GATEWAY_TELEPHONY_BARGE_IN": "false" if args.no_barge_in else "true"}
    flags: list[str] = []
    if args.protocol == "audiosocket":
        extra["GATEWAY_TELEPHONY_AUDIOSOCKET_GREETING"] = PARAGRAPH
        flags = ["--audiosocket-port", str(port)]
    gateway = Gateway(engine_env("replay", extra), *flags).wait_ready()
    gateway.ports.append(port)
    try:
        stream_url = gateway.url.replace("http", "ws", 1) + f"/v1/telephony/{args.protocol}/stream"
        if args.protocol in ("twilio", "signalwire"):
            spec: Any = TwilioBotSpec(stream_url, echo_db=args.echo_db)
        elif args.protocol in JSON_DIALECTS:
            spec = JsonStreamBotSpec(args.protocol, stream_url)
        elif args.protocol in CARRIER_DIALECTS:
            spec = CarrierBotSpec(args.protocol, stream_url)
        else:
            spec = AudioSocketBotSpec("127.0.0.1", port)
        print(f"{args.protocol} on the replay engine, barge-in {'off' if args.no_barge_in else 'on'}; gateway pid "
              f"{gateway.pid} at {gateway.url}; {os.cpu_count()} cores shared by the gateway and the bots", flush=True)  # fmt: skip
        wire = {"twilio": "text", "freeswitch": "text", "audiosocket": "audiosocket"}.get(args.protocol, "binary")
        wire = "text" if args.protocol in JSON_DIALECTS else wire
        listener = Listener(LEAD, 0.0, wire)
        rows = ramp(gateway, spec, args.ramp, listener, bots_for(args, gateway))
        report_capacity(rows, f"{args.protocol} calls (replay)")
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
