"""Exotel voicebot streams (the Voicebot applet, bidirectional; or ``streamtype=bidirectional`` calls).

Inbound: ``connected``, ``start`` (``stream_sid``; ``start.call_sid``,
``start.custom_parameters`` — the query parameters of the configured URL —
and ``start.media_format`` with ``encoding`` ``audio/x-raw`` and
``sample_rate`` as a string), ``media`` (base64 16-bit little-endian PCM,
about every 100 ms), ``dtmf``, ``mark`` (an echo of ours once played),
``stop``. Outbound: ``media``, ``mark`` and ``clear``, each naming the stream
by ``stream_sid``.

Exotel wants audio in chunks of a multiple of 320 bytes: our 20 ms frames are
320 bytes at 8 kHz, 640 at 16 kHz and 960 at 24 kHz.
"""

from __future__ import annotations

import json

from signaling.serializers.base import Media, ProtocolViolation, Start
from signaling.serializers.json_dialect import JsonMediaSerializer, media_head
from signaling.serializers.json_media import Codec, base64_media, object_field, rate_of, string_map

ENCODING = "audio/x-raw"
RATES = (8000, 16000, 24000)  # the Voicebot URL's ?sample-rate=


class ExotelSerializer(JsonMediaSerializer):
    name = "Exotel"

    def __init__(self) -> None:
        super().__init__()
        self.codec = Codec.S16LE

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "stream_sid": self.stream_id, "mark": {"name": name}})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clear", "stream_sid": self.stream_id})

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        if not isinstance(start, dict):
            raise ProtocolViolation("start without a start object")
        stream_sid = fields.get("stream_sid") or start.get("stream_sid")
        if not stream_sid:
            raise ProtocolViolation("start without stream_sid")
        media_format = object_field(start, "media_format")
        if media_format.get("encoding", ENCODING) != ENCODING:
            raise ProtocolViolation(f"unsupported Exotel encoding {media_format.get('encoding')!r}")
        self.rate = rate_of(media_format.get("sample_rate"), RATES, 8000)
        self.stream_id = str(stream_sid)
        self._media_head = media_head({"event": "media", "stream_sid": self.stream_id, "media": {"payload": ""}})
        parameters = string_map(start.get("custom_parameters"), "custom_parameters")
        return Start(str(start.get("call_sid", "")), self.stream_id, parameters, self.rate)

    def _media(self, media: dict) -> Media:
        return base64_media(media.get("payload", ""), self.codec, self.rate)  # Exotel streams one track
