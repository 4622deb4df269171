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

ENCODING = "audio/x-raw"
RATES = (8000, 16000, 24000)  # the Voicebot URL's ?sample-rate=


class ExotelSerializer(CarrierSerializer):
    name = "Exotel"
    echoes_marks = True

    def __init__(self) -> None:
        self.stream_sid = ""
        self.rate = 8000
        self._media_head = ""

    def decode(self, message: Message) -> Inbound | None:
        fields = json_object(message, self.name)
        event = fields.get("event")
        if event in ("media", "mark", "dtmf") and not isinstance(fields.get(event), dict):
            raise Malformed(f"an Exotel {event!r} message without a {event!r} object")
        if event == "media":
            return base64_media(fields["media"].get("payload", ""), Codec.S16LE, self.rate)
        if event == "mark":
            return Mark(str(fields["mark"].get("name")))
        if event == "dtmf":
            digit = fields["dtmf"].get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "stop":
            return Stop()
        if event == "start":
            return None if self.stream_sid else self._start(fields)
        if event == "connected":
            return None
        return Problem(f"unknown Exotel event {event!r} ignored")

    def decode_audio(self, media: Media) -> np.ndarray:
        return decode_base64(media, Codec.S16LE)

    def encode_audio(self, samples: np.ndarray) -> str:
        return self._media_head + encode_base64(samples, Codec.S16LE) + '"}}'

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": name}})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clear", "stream_sid": self.stream_sid})

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        if not isinstance(start, dict):
            raise ProtocolViolation("start without a start object")
        stream_sid = fields.get("stream_sid") or start.get("stream_sid")
        if not stream_sid:
            raise ProtocolViolation("start without stream_sid")
        media_format = start.get("media_format") or {}
        if not isinstance(media_format, dict):
            raise ProtocolViolation(f"start with a media_format that is not an object: {media_format!r}")
        if media_format.get("encoding", ENCODING) != ENCODING:
            raise ProtocolViolation(f"unsupported Exotel encoding {media_format.get('encoding')!r}")
        self.rate = rate_of(media_format.get("sample_rate"), RATES, 8000)
        self.stream_sid = str(stream_sid)
        # The hot path: the fixed part of every media message JSON-encoded once (base64 needs no escaping).
        self._media_head = json.dumps({"event": "media", "stream_sid": self.stream_sid, "media": {"payload": ""}})[:-3]
        parameters = string_map(start.get("custom_parameters"), "custom_parameters")
        return Start(str(start.get("call_sid", "")), self.stream_sid, parameters, self.rate)
