"""Telnyx media streaming (TeXML ``<Stream bidirectionalMode="rtp">`` or Call Control ``streaming_start``).

Inbound: ``connected``, ``start`` (top-level ``stream_id``;
``start.call_control_id``, ``start.media_format`` with ``encoding`` and
``sample_rate``, ``start.custom_parameters``), ``media`` (base64 RTP
payloads, no headers, with ``media.track``, ``media.chunk``,
``media.timestamp``), ``dtmf``, ``mark`` (an echo of ours once played),
``error`` and ``stop``. Outbound: ``media``, ``mark`` and ``clear``.

Facts relied on (Telnyx's media streaming docs): audio sent back is dropped
unless the stream was requested with bidirectional mode ``rtp``; media
frames may arrive out of order (reordered here by ``media.chunk`` within
:data:`REORDER_WINDOW` frames); PCMU, PCMA and L16 (network byte order) are
carried at 8 or 16 kHz; G722, OPUS and AMR-WB are refused at the start. Our
audio goes back in the codec and rate the start names, so the stream's
bidirectional codec must be set equal to its codec (our TeXML does).
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np

from signaling.serializers.base import (
    CarrierSerializer,
    Dtmf,
    Inbound,
    Malformed,
    Mark,
    Media,
    Message,
    Problem,
    ProtocolViolation,
    Start,
    Stop,
)
from signaling.serializers.json_media import (
    Codec,
    base64_media,
    decode_base64,
    encode_base64,
    json_object,
    rate_of,
    string_map,
)

CODECS = {"PCMU": Codec.ULAW, "PCMA": Codec.ALAW, "L16": Codec.L16}
RATES = (8000, 16000)
# Frames held back waiting for a missing one: 3 frames (60 ms at Telnyx's 20 ms) cover the reordering
# of a jittery path, and bound what a lost frame delays the speech detector by.
REORDER_WINDOW = 3
CLEAR = json.dumps({"event": "clear"})
# The hot path: the fixed part of every media message JSON-encoded once (base64 needs no escaping).
MEDIA_HEAD = json.dumps({"event": "media", "media": {"payload": ""}})[:-3]


class TelnyxSerializer(CarrierSerializer):
    name = "Telnyx"
    echoes_marks = True

    def __init__(self) -> None:
        self.stream_id = ""
        self.codec = Codec.ULAW
        self.rate = 8000
        self._order = ChunkOrder(REORDER_WINDOW)

    def decode(self, message: Message) -> Inbound | None:
        fields = json_object(message, self.name)
        event = fields.get("event")
        if event in ("media", "mark", "dtmf") and not isinstance(fields.get(event), dict):
            raise Malformed(f"a Telnyx {event!r} message without a {event!r} object")
        if event == "media":
            return self._media(fields["media"])
        if event == "mark":
            return Mark(str(fields["mark"].get("name")))
        if event == "dtmf":
            digit = fields["dtmf"].get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "stop":
            return Stop()
        if event == "start":
            return None if self.stream_id else self._start(fields)
        if event == "error":
            payload = fields.get("payload") if isinstance(fields.get("payload"), dict) else {}
            what = payload.get("title") or payload.get("detail")
            return Problem(f"Telnyx reported error {payload.get('code')}: {what}")
        if event == "connected":
            return None
        return Problem(f"unknown Telnyx event {event!r} ignored")

    def released(self) -> list[Inbound]:
        return self._order.ready()

    def decode_audio(self, media: Media) -> np.ndarray:
        return decode_base64(media, self.codec)

    def encode_audio(self, samples: np.ndarray) -> str:
        return MEDIA_HEAD + encode_base64(samples, self.codec) + '"}}'

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def encode_clear(self) -> str:
        return CLEAR

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        stream_id = fields.get("stream_id") or (start.get("stream_id") if isinstance(start, dict) else None)
        if not isinstance(start, dict) or not stream_id:
            raise ProtocolViolation("start without stream_id")
        media_format = start.get("media_format") or {}
        if not isinstance(media_format, dict):
            raise ProtocolViolation(f"start with a media_format that is not an object: {media_format!r}")
        encoding = str(media_format.get("encoding", "PCMU")).upper()
        if encoding not in CODECS:
            raise ProtocolViolation(f"unsupported Telnyx encoding {encoding!r} (PCMU, PCMA and L16 are carried)")
        self.codec = CODECS[encoding]
        self.rate = rate_of(media_format.get("sample_rate"), RATES, 8000)
        if self.codec is not Codec.L16 and self.rate != 8000:
            raise ProtocolViolation(f"{encoding} at {self.rate} Hz")
        self.stream_id = str(stream_id)
        self._order = ChunkOrder(REORDER_WINDOW)  # audio before the start was never heard: its order does not count
        parameters = string_map(start.get("custom_parameters"), "custom_parameters")
        return Start(str(start.get("call_control_id", "")), self.stream_id, parameters, self.rate)

    def _media(self, media: dict) -> Media | None:
        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
            return None
        frame = base64_media(media.get("payload", ""), self.codec, self.rate)
        return self._order.put(media.get("chunk"), frame)


class ChunkOrder:
    """Caller audio back in chunk order: a frame ahead of a gap waits for it, at most ``window`` frames.

    A frame older than one already passed on is dropped (it would be heard out of
    place); frames without a chunk number pass straight through.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.next: int | None = None
        self.held: dict[int, Media] = {}
        self._ready: deque[Media] = deque()
        self.dropped = 0

    def put(self, chunk: object, frame: Media) -> Media | None:
        """The next frame due, if any; the rest due now come from :meth:`ready`."""
        try:
            number = int(chunk)
        except (TypeError, ValueError):
            return frame
        if self.next is None:
            self.next = number
        if number < self.next or number in self.held:
            self.dropped += 1
            return None
        self.held[number] = frame
        self._advance()
        if len(self.held) > self.window:  # the gap's frame is lost: skip it
            self.next = min(self.held)
            self._advance()
        return self._ready.popleft() if self._ready else None

    def ready(self) -> list[Media]:
        frames = list(self._ready)
        self._ready.clear()
        return frames

    def _advance(self) -> None:
        while self.next in self.held:
            self._ready.append(self.held.pop(self.next))
            self.next += 1
