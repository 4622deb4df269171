"""Twilio Media Streams (bidirectional ``<Connect><Stream>``): JSON text messages.

Inbound: ``connected``, ``start`` (``streamSid``, ``callSid``,
``customParameters``, ``mediaFormat``), ``media`` (base64 μ-law 8 kHz,
``track``), ``mark`` (an echo of ours, once the audio before it has played),
``dtmf``, ``stop``. Outbound: ``media``, ``mark`` and ``clear``, each naming
the stream, which this serializer learns from ``start``.
"""

from __future__ import annotations

import json

from signaling.serializers.base import Media, ProtocolViolation, Start, Undecodable
from signaling.serializers.json_dialect import JsonMediaSerializer, media_head
from signaling.serializers.json_media import object_field

SAMPLE_RATE = 8000
ENCODING = "audio/x-mulaw"


class TwilioSerializer(JsonMediaSerializer):
    name = "Twilio"

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_id, "mark": {"name": name}})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_id})

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        if not isinstance(start, dict) or not start.get("streamSid"):
            raise ProtocolViolation("start without streamSid")
        parameters = start.get("customParameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolViolation("start with customParameters that are not an object")
        media_format = object_field(start, "mediaFormat")
        if media_format and media_format.get("encoding", ENCODING) != ENCODING:
            raise ProtocolViolation(f"unsupported media format {media_format}")
        self.stream_id = str(start["streamSid"])
        self._media_head = media_head({"event": "media", "streamSid": self.stream_id, "media": {"payload": ""}})
        parameters = {str(name): str(value) for name, value in parameters.items()}
        return Start(str(start.get("callSid", "")), self.stream_id, parameters, SAMPLE_RATE)

    def _media(self, media: dict) -> Media | None:
        if media.get("track", "inbound") != "inbound":
            return None
        encoded = media.get("payload", "")
        if not isinstance(encoded, str):
            raise Undecodable("undecodable media payload ignored")
        # Sized before decoding: base64 carries 3 bytes of μ-law (3 samples) in 4 characters.
        return Media(encoded, len(encoded) * 3 // 4 / SAMPLE_RATE, SAMPLE_RATE)
