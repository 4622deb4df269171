"""Plivo audio streams (Plivo XML ``<Stream bidirectional="true">``); Vobiz speaks the same dialect.

Inbound: ``start`` (``start.streamId``, ``start.callId``,
``start.mediaFormat`` with ``encoding`` and ``sampleRate``), ``media``
(base64, ``media.track``), ``dtmf`` (``dtmf.digit``), ``playedStream`` (a
checkpoint of ours reached: everything sent before it has played),
``clearedAudio`` (our clear done) and, from Plivo, ``stop``; Vobiz sends no
stop: its socket closes. Outbound: ``playAudio`` (``media.contentType``,
``media.sampleRate``, ``media.payload``), ``checkpoint`` (``name``) and
``clearAudio``, each naming the stream.

μ-law at 8 kHz is what our Plivo XML asks for; ``audio/x-l16`` at 8 or
16 kHz is read as little-endian 16-bit PCM (Plivo's docs name no byte order).
"""

from __future__ import annotations

import json

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

CONTENT_TYPES = {"audio/x-mulaw": Codec.ULAW, "audio/x-l16": Codec.S16LE}
RATES = (8000, 16000)


class PlivoSerializer(CarrierSerializer):
    name = "Plivo"
    echoes_marks = True  # as checkpoints, answered by playedStream

    def __init__(self) -> None:
        self.stream_id = ""
        self.content_type = "audio/x-mulaw"
        self.codec = Codec.ULAW
        self.rate = 8000
        self._media_head = ""

    def decode(self, message: Message) -> Inbound | None:
        fields = json_object(message, self.name)
        event = fields.get("event")
        if event in ("media", "dtmf") and not isinstance(fields.get(event), dict):
            raise Malformed(f"a Plivo {event!r} message without a {event!r} object")
        if event == "media":
            media = fields["media"]
            if media.get("track", "inbound") != "inbound":
                return None
            return base64_media(media.get("payload", ""), self.codec, self.rate)
        if event == "playedStream":
            return Mark(str(fields.get("name")))
        if event == "dtmf":
            digit = fields["dtmf"].get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "stop":
            return Stop()
        if event == "start":
            return None if self.stream_id else self._start(fields)
        if event in ("clearedAudio", "connected"):
            return None
        return Problem(f"unknown Plivo event {event!r} ignored")

    def decode_audio(self, media: Media) -> np.ndarray:
        return decode_base64(media, self.codec)

    def encode_audio(self, samples: np.ndarray) -> str:
        return self._media_head + encode_base64(samples, self.codec) + '"}}'

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clearAudio", "streamId": self.stream_id})

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        if not isinstance(start, dict) or not start.get("streamId"):
            raise ProtocolViolation("start without streamId")
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolViolation(f"start with a mediaFormat that is not an object: {media_format!r}")
        content_type = str(media_format.get("encoding", "audio/x-mulaw")).lower()
        if content_type not in CONTENT_TYPES:
            carried = " and ".join(CONTENT_TYPES)
            raise ProtocolViolation(f"unsupported Plivo encoding {content_type!r} ({carried} are carried)")
        self.codec, self.content_type = CONTENT_TYPES[content_type], content_type
        self.rate = rate_of(media_format.get("sampleRate"), RATES, 8000)
        if self.codec is Codec.ULAW and self.rate != 8000:
            raise ProtocolViolation(f"μ-law at {self.rate} Hz")
        self.stream_id = str(start["streamId"])
        media = {"contentType": self.content_type, "sampleRate": self.rate, "payload": ""}
        # The hot path: the fixed part of every playAudio message JSON-encoded once (base64 needs no escaping).
        self._media_head = json.dumps({"event": "playAudio", "streamId": self.stream_id, "media": media})[:-3]
        extra = fields.get("extra_headers", start.get("extra_headers"))
        parameters = string_map(extra, "extra_headers") if isinstance(extra, dict) else {}
        return Start(str(start.get("callId", "")), self.stream_id, parameters, self.rate)
