"""Asterisk's WebSocket channel driver, chan_websocket (Asterisk 20.16, 21.11, 22.6, 23.0 and later).

BINARY messages are media in the channel's format (``Dial(WebSocket/<connection>/c(slin16)f(json))``);
TEXT messages are control, as JSON (``{"event": "MEDIA_START", ...}``,
``{"command": "FLUSH_MEDIA"}``; the preferred format since 20.18, 22.8 and
23.2) or the older plain text (``MEDIA_START connection_id:... format:ulaw``),
answered in whichever the call's ``MEDIA_START`` used. Inbound events:
``MEDIA_START`` (``connection_id``, ``channel_id``, ``format``,
``channel_variables``), ``DTMF_END`` (``digit``), ``MEDIA_XOFF`` / ``MEDIA_XON``,
``MEDIA_MARK_PROCESSED`` (``correlation_id``), ``STATUS``,
``MEDIA_BUFFERING_COMPLETED``, ``QUEUE_DRAINED``. Commands we send:
``MARK_MEDIA`` and ``FLUSH_MEDIA`` (drop what is queued, on barge-in).
Asterisk re-frames and re-times what it gets; we still pace at real time,
so its queue (about 1000 frames) never fills.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

import numpy as np

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.pcm import from_s16le, to_int16, to_s16le
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
from signaling.serializers.linear import pcm_media, scalar_fields, text_object


class Encoding(Enum):
    SLIN = "slin"  # signed 16-bit little-endian
    ULAW = "ulaw"  # G.711, one byte a sample
    ALAW = "alaw"


@dataclass(frozen=True)
class Format:
    """An Asterisk format we can speak."""

    sample_rate: int
    encoding: Encoding = Encoding.SLIN

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.SLIN else 1


FORMATS = {
    "ulaw": Format(8000, Encoding.ULAW),
    "alaw": Format(8000, Encoding.ALAW),
    "slin": Format(8000),
    "slin12": Format(12000),
    "slin16": Format(16000),
    "slin24": Format(24000),
    "slin32": Format(32000),
    "slin44": Format(44100),
    "slin48": Format(48000),
}
IGNORED = frozenset({"MEDIA_XON", "STATUS", "MEDIA_BUFFERING_COMPLETED", "QUEUE_DRAINED"})


def parse_plain(text: str) -> dict:
    """A plain-text control message as the JSON one would be: ``NAME key:value ... [bare id]``."""
    name, *words = text.split()
    fields: dict = {"event": name}
    for word in words:
        key, colon, value = word.partition(":")
        if colon:
            fields[key] = value
        else:
            fields.setdefault("correlation_id", word)  # e.g. a mark's or buffering's bare id
    return fields


class AsteriskSerializer(CarrierSerializer):
    name = "Asterisk"
    echoes_marks = True

    def __init__(self) -> None:
        self.format: Format | None = None  # learnt from MEDIA_START
        self.json = True  # answer in the control format MEDIA_START came in

    def decode(self, message: Message) -> Inbound | None:
        if isinstance(message, bytes):
            if self.format is None:
                raise ProtocolViolation("media before MEDIA_START")
            return pcm_media(message, self.format.sample_rate, self.format.bytes_per_sample)
        is_json = message.lstrip().startswith("{")
        if not is_json and not message.strip():
            raise Malformed("an empty Asterisk control message")
        fields = text_object(message, self.name) if is_json else parse_plain(message)
        event = fields.get("event")
        if event == "MEDIA_START":
            return None if self.format else self._start(fields, is_json)  # a second one means nothing
        if event == "DTMF_END":
            digit = fields.get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "MEDIA_MARK_PROCESSED":
            return Mark(str(fields.get("correlation_id")))
        if event == "MEDIA_XOFF":
            return Problem("Asterisk's media queue is full (MEDIA_XOFF): audio may be dropped")
        if event in ("HANGUP", "MEDIA_END"):
            return Stop()
        if event in IGNORED:
            return None
        return Problem(f"unknown Asterisk event {event!r} ignored")

    def decode_audio(self, media: Media) -> np.ndarray:
        encoding = self.format.encoding
        if encoding is Encoding.ULAW:
            return ulaw_decode(media.payload) / np.float32(32768.0)
        if encoding is Encoding.ALAW:
            return alaw_decode(media.payload) / np.float32(32768.0)
        return from_s16le(media.payload)

    def encode_audio(self, samples: np.ndarray) -> bytes:
        encoding = self.format.encoding
        if encoding is Encoding.ULAW:
            return ulaw_encode(to_int16(samples))
        if encoding is Encoding.ALAW:
            return alaw_encode(to_int16(samples))
        return to_s16le(samples)

    def encode_mark(self, name: str) -> str:
        return self._command("MARK_MEDIA", name)

    def encode_clear(self) -> str:
        return self._command("FLUSH_MEDIA")

    def _command(self, command: str, correlation_id: str = "") -> str:
        if not self.json:
            return f"{command} {correlation_id}".rstrip()
        fields = {"command": command} | ({"correlation_id": correlation_id} if correlation_id else {})
        return json.dumps(fields)

    def _start(self, fields: dict, is_json: bool) -> Start:
        self.format = FORMATS.get(str(fields.get("format")))
        if self.format is None:
            raise ProtocolViolation(f"unsupported Asterisk format {fields.get('format')!r} (use one of {sorted(FORMATS)})")
        self.json = is_json
        call_id = str(fields.get("channel_id") or fields.get("connection_id") or "")
        if not call_id:
            raise ProtocolViolation("MEDIA_START without a channel_id or connection_id")
        variables = fields.get("channel_variables")
        # Channel variables open the session; their names are upper case by custom (VOICE, TEXT), ours lower.
        variables = scalar_fields(variables) if isinstance(variables, dict) else {}
        parameters = {name.lower(): value for name, value in variables.items()}
        return Start(call_id, str(fields.get("connection_id") or call_id), parameters, self.format.sample_rate)
