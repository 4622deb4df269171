"""Twilio Media Streams (bidirectional ``<Connect><Stream>``): JSON text messages.

Inbound: ``connected``, ``start`` (``streamSid``, ``callSid``,
``customParameters``, ``mediaFormat``), ``media`` (base64 μ-law 8 kHz,
``track``), ``mark`` (an echo of ours, once the audio before it has played),
``dtmf``, ``stop``. Outbound: ``media``, ``mark`` and ``clear``, each naming
the stream, which this serializer learns from ``start``.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from media.g711 import ulaw_decode, ulaw_encode
from media.pcm import to_int16
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
    Undecodable,
)

SAMPLE_RATE = 8000
ENCODING = "audio/x-mulaw"


class TwilioSerializer(CarrierSerializer):
    name = "Twilio"
    echoes_marks = True

    def __init__(self) -> None:
        self.stream_sid = ""
        self._media_head = ""

    def decode(self, message: Message) -> Inbound | None:
        fields = _object(message)
        event = fields.get("event")
        if event in ("media", "mark", "dtmf") and not isinstance(fields.get(event), dict):
            raise Malformed(f"a Twilio {event!r} message without a {event!r} object")
        if event == "media":
            return _media(fields["media"])
        if event == "mark":
            return Mark(str(fields["mark"].get("name")))
        if event == "dtmf":
            digit = fields["dtmf"].get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "stop":
            return Stop()
        if event == "start":
            return None if self.stream_sid else self._start(fields.get("start"))  # a second start means nothing
        if event == "connected":
            return None
        return Problem(f"unknown Twilio event {event!r} ignored")

    def decode_audio(self, media: Media) -> np.ndarray:
        try:
            data = base64.b64decode(media.payload, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise Undecodable("undecodable media payload ignored") from None
        return ulaw_decode(data) / np.float32(32768.0)

    def encode_audio(self, samples: np.ndarray) -> str:
        return self._media_head + base64.b64encode(ulaw_encode(to_int16(samples))).decode() + '"}}'

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def encode_clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})

    def _start(self, start: object) -> Start:
        if not isinstance(start, dict) or not start.get("streamSid"):
            raise ProtocolViolation("start without streamSid")
        parameters = start.get("customParameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolViolation("start with customParameters that are not an object")
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolViolation(f"start with a mediaFormat that is not an object: {media_format!r}")
        if media_format and media_format.get("encoding", ENCODING) != ENCODING:
            raise ProtocolViolation(f"unsupported media format {media_format}")
        self.stream_sid = str(start["streamSid"])
        # Media messages are the stream's one hot path: JSON-encode their fixed part once
        # (base64 needs no escaping), so each is what json.dumps would make, without it.
        self._media_head = json.dumps({"event": "media", "streamSid": self.stream_sid, "media": {"payload": ""}})[:-3]
        parameters = {str(name): str(value) for name, value in parameters.items()}
        return Start(str(start.get("callSid", "")), self.stream_sid, parameters, SAMPLE_RATE)


def _object(message: Message) -> dict:
    try:
        fields = json.loads(message) if isinstance(message, str) else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        fields = None
    if not isinstance(fields, dict):
        raise Malformed("a Twilio message that is not a JSON object")
    return fields


def _media(media: dict) -> Media | None:
    if media.get("track", "inbound") != "inbound":
        return None
    encoded = media.get("payload", "")
    if not isinstance(encoded, str):
        raise Undecodable("undecodable media payload ignored")
    # Sized before decoding: base64 carries 3 bytes of μ-law (3 samples) in 4 characters.
    return Media(encoded, len(encoded) * 3 // 4 / SAMPLE_RATE, SAMPLE_RATE)
