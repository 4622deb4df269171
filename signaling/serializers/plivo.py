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

from signaling.serializers.base import Mark, ProtocolViolation, Start
from signaling.serializers.json_dialect import JsonMediaSerializer, media_head
from signaling.serializers.json_media import Codec, object_field, rate_of, string_map

CONTENT_TYPES = {"audio/x-mulaw": Codec.ULAW, "audio/x-l16": Codec.S16LE}
RATES = (8000, 16000)


class PlivoSerializer(JsonMediaSerializer):
    name = "Plivo"
    mark_event = "playedStream"  # our checkpoint reached
    nested = ("media", "dtmf")
    quiet = frozenset({"clearedAudio", "connected"})

    def __init__(self) -> None:
        super().__init__()
        self.content_type = "audio/x-mulaw"

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clearAudio", "streamId": self.stream_id})

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        if not isinstance(start, dict) or not start.get("streamId"):
            raise ProtocolViolation("start without streamId")
        media_format = object_field(start, "mediaFormat")
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
        self._media_head = media_head({"event": "playAudio", "streamId": self.stream_id, "media": media})
        extra = fields.get("extra_headers", start.get("extra_headers"))
        parameters = string_map(extra, "extra_headers") if isinstance(extra, dict) else {}
        return Start(str(start.get("callId", "")), self.stream_id, parameters, self.rate)

    def _mark(self, fields: dict) -> Mark:
        return Mark(str(fields.get("name")))
