"""Pieces the JSON-plus-binary dialects share: text control as JSON objects, caller audio as 16-bit PCM.

Vonage, jambonz, FreeSWITCH's mod_audio_stream and Asterisk's chan_websocket
all send caller audio as binary WebSocket messages of signed 16-bit
little-endian mono PCM (or G.711 for Asterisk) and speak in text messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from signaling.serializers.base import Malformed, Media, Message, ProtocolViolation, Undecodable


def json_object(message: Message, dialect: str) -> dict:
    """A text message's JSON object; :class:`Malformed` for anything else."""
    try:
        fields = json.loads(message) if isinstance(message, str) else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        fields = None
    if not isinstance(fields, dict):
        raise Malformed(f"a {dialect} text message that is not a JSON object")
    return fields


def pcm_media(data: Message, sample_rate: int, bytes_per_sample: int = 2) -> Media:
    """Binary caller audio, sized before it is decoded; a torn sample is undecodable."""
    if not isinstance(data, bytes):
        raise Malformed("caller audio in a text message")
    if len(data) % bytes_per_sample:
        raise Undecodable(f"caller audio of {len(data)} bytes, not whole {bytes_per_sample}-byte samples, ignored")
    return Media(data, len(data) / bytes_per_sample / sample_rate, sample_rate)


def scalar_fields(fields: Mapping, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """A message's string, number and boolean fields as session parameters (nested values are not ours)."""
    return {
        str(name): str(value)
        for name, value in fields.items()
        if name not in skip and isinstance(value, str | int | float | bool)
    }


def sample_rate_of(value: object, allowed: tuple[int, ...], dialect: str) -> int:
    """A rate the far end named, if the call can run at it; any other rate breaks the call (ProtocolViolation)."""
    try:
        rate = int(value)
    except (TypeError, ValueError):
        rate = 0
    if rate not in allowed:
        raise ProtocolViolation(f"{dialect} audio at {value!r} Hz is not supported (use one of {allowed})")
    return rate
