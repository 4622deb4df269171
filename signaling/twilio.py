"""Twilio Media Streams (bidirectional ``<Connect><Stream>``) for a session.

Outbound audio is μ-law 8 kHz, base64, no file header, sent in 20 ms
``media`` messages at real-time pace with a small lead, so a barge-in loses
at most the lead and ``clear`` empties what Twilio holds. Every mark the
session reaches (client marks, utterance ends) becomes a Twilio ``mark``;
Twilio echoes it once the audio before it has played, and only then does
the session report it: played-until is what the caller actually heard.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
from collections.abc import Callable

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from media.g711 import ulaw_decode, ulaw_encode
from media.pacing import PacedReader
from media.pcm import to_int16
from media.playout import Frame, Reached
from signaling.bargein import BargeIn
from signaling.inbound import CallerAudio
from signaling.session import LimitExceeded, Session

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms
START_TIMEOUT = 10.0


class TwilioCall:
    """One Media Streams WebSocket: the protocol, the pacing and the marks."""

    def __init__(
        self,
        websocket: WebSocket,
        open_session: Callable[[dict[str, str]], Session],
        *,
        lead: float,
        barge_in: bool,
    ) -> None:
        self.websocket = websocket
        self.open_session = open_session
        self.lead = lead
        self.barge_in_enabled = barge_in
        self.session: Session | None = None
        self.stream_sid = ""
        self.call_sid = ""
        self.barge_in: BargeIn | None = None
        self.inbound: CallerAudio | None = None
        self.inbound_frames = 0
        self._marks: dict[str, Reached] = {}
        self._mark_ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self._media_head = ""
        self.ignored_messages = 0  # malformed messages from the far end: counted, reported, skipped

    async def run(self) -> None:
        """Serve the call until Twilio sends ``stop`` or the socket closes."""
        try:
            start = await self._await_start()
        except (WebSocketDisconnect, asyncio.TimeoutError, ValueError) as error:
            log.warning("twilio stream ended before start: %s", error)
            await self._close(1008 if isinstance(error, ValueError) else 1000)
            return
        parameters = start.get("customParameters") or {}
        try:
            self.session = self.open_session({str(k): str(v) for k, v in parameters.items()})
        except Exception as error:
            log.warning("twilio call %s refused: %s", self.call_sid, error)
            await self._close(1008)
            return
        self.inbound = CallerAudio(self.session)
        if self.barge_in_enabled:
            self.barge_in = BargeIn(self.session, SAMPLE_RATE)
        reader = PacedReader(self.session.buffer, FRAME_SAMPLES, self._send_frame, lead=self.lead)
        events = self.session.events.subscribe()
        tasks = [asyncio.ensure_future(self._receive()), asyncio.ensure_future(reader.run()), asyncio.ensure_future(self._watch(events))]
        if parameters.get("text"):
            try:
                self.session.say(str(parameters["text"]), flush=True)
            except LimitExceeded as error:  # first words too long to take: the call goes on, silent until told
                log.warning("twilio call %s: its first words were refused: %s", self.call_sid, error)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            events.close()
            if self.barge_in is not None:
                self.barge_in.close()
            self.inbound.log_summary()
            await self.session.close("call ended")
            await self._close(1000)

    async def _await_start(self) -> dict:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                message = self._parse(await self.websocket.receive_text())
                if message is None:
                    continue
                if message.get("event") == "start":
                    start = message.get("start")
                    if not isinstance(start, dict) or not start.get("streamSid"):
                        raise ValueError("start without streamSid")
                    self.stream_sid = str(start["streamSid"])
                    # Media messages are the stream's one hot path: JSON-encode their fixed part once
                    # (base64 needs no escaping), so each is what json.dumps would make, without it.
                    media = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": ""}}
                    self._media_head = json.dumps(media)[:-3]
                    self.call_sid = str(start.get("callSid", ""))
                    if not isinstance(start.get("customParameters") or {}, dict):
                        raise ValueError("start with customParameters that are not an object")
                    media_format = start.get("mediaFormat") or {}
                    if not isinstance(media_format, dict):
                        raise ValueError(f"start with a mediaFormat that is not an object: {media_format!r}")
                    if media_format and media_format.get("encoding", "audio/x-mulaw") != "audio/x-mulaw":
                        raise ValueError(f"unsupported media format {media_format}")
                    return start
                if message.get("event") == "stop":
                    raise WebSocketDisconnect(1000)

    async def _receive(self) -> None:
        while True:
            raw = await self.websocket.receive()
            if raw["type"] == "websocket.disconnect":
                return
            message = self._parse(raw.get("text") or "")
            if message is None:
                continue
            event = message.get("event")
            if event in ("media", "mark", "dtmf") and not isinstance(message.get(event), dict):
                self._ignore(f"a Twilio {event!r} message without a {event!r} object")
                continue
            if event == "media":
                self._inbound_media(message.get("media") or {})
            elif event == "mark":
                reached = self._marks.pop(str((message.get("mark") or {}).get("name")), None)
                if reached is not None:
                    self.session.on_reached(reached)
            elif event == "dtmf":
                digit = (message.get("dtmf") or {}).get("digit")
                self.session.events.emit("dtmf", digit=digit)
                self.session.touch()
            elif event == "stop":
                return
            elif event not in ("connected", "start"):
                self.session.events.emit("error", message=f"unknown Twilio event {event!r} ignored")

    def _inbound_media(self, media: dict) -> None:
        if media.get("track", "inbound") != "inbound":
            return
        encoded = media.get("payload", "")
        # Sized before decoding: base64 carries 3 bytes of μ-law (3 samples) in 4 characters.
        if isinstance(encoded, str) and not self.inbound.admit(len(encoded) * 3 // 4 / SAMPLE_RATE):
            return
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError):
            self.session.events.emit("error", message="undecodable media payload ignored")
            return
        self.inbound_frames += 1
        if self.barge_in is not None and payload:
            self.barge_in.heard(ulaw_decode(payload) / np.float32(32768.0))

    async def _send_frame(self, frame: Frame) -> None:
        self.session.on_frame(frame, report_reached=False)
        if frame.audio or frame.underrun:
            if self.barge_in is not None:
                self.barge_in.sent(frame.samples)
            payload = base64.b64encode(ulaw_encode(to_int16(frame.samples))).decode()
            async with self._send_lock:
                await self.websocket.send_text(self._media_head + payload + '"}}')
        for reached in frame.reached:
            name = f"{reached.kind}-{reached.tag}-{next(self._mark_ids)}"
            self._marks[name] = reached
            await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _watch(self, events) -> None:
        async for event in events:
            if event["type"] == "audio.cleared":
                await self._send({"event": "clear", "streamSid": self.stream_sid})

    async def _send(self, message: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message))

    def _parse(self, text: str) -> dict | None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            message = None
        if not isinstance(message, dict):
            self._ignore("a Twilio message that is not a JSON object")
            return None
        return message

    def _ignore(self, what: str) -> None:
        """A malformed message costs the far end that message, not the call: logged once per call, then counted."""
        self.ignored_messages += 1
        if self.ignored_messages == 1:
            log.warning("twilio stream %s: ignored %s (further ones are only counted)", self.stream_sid or "?", what)
        if self.session is not None:
            self.session.events.emit("error", message=f"malformed Twilio message ignored: {what}")

    async def _close(self, code: int) -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=code)
