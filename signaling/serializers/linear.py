"""Pieces the JSON-plus-binary dialects share: text control as JSON objects, caller audio as 16-bit PCM.

Vonage, jambonz, FreeSWITCH's mod_audio_stream and Asterisk's chan_websocket
all send caller audio as binary WebSocket messages of signed 16-bit
little-endian mono PCM (or G.711 for Asterisk) and speak in text messages.
:class:`LinearSerializer` is the shape of those that learn the rate from the
call's first text message (Vonage, jambonz).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import numpy as np

from media.pcm import from_s16le, to_s16le
from signaling.serializers.base import (
    CarrierSerializer,
    Inbound,
    Malformed,
    Media,
    Message,
    ProtocolViolation,
    Undecodable,
)
from signaling.serializers.json_text import json_object
from signaling.serializers.rates import allowed_rate


def text_object(message: Message, dialect: str) -> dict:
    """A text message's JSON object; :class:`Malformed` for anything else."""
    return json_object(message, f"{dialect} text message")


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
    return allowed_rate(value, allowed, f"{dialect} audio at {value!r} Hz is not supported (use one of {allowed})")


class LinearSerializer(CarrierSerializer):
    """Binary s16le audio both ways, at the rate the call's start names; text messages are JSON control."""

    echoes_marks = True
    early_audio: str  # what audio before the start is called, as the protocol violation says it

    def __init__(self) -> None:
        self.sample_rate: int | None = None  # learnt from the start

    def decode(self, message: Message) -> Inbound | None:
        if isinstance(message, bytes):
            if self.sample_rate is None:
                raise ProtocolViolation(self.early_audio)
            return pcm_media(message, self.sample_rate)
        return self._control(text_object(message, self.name))

    def decode_audio(self, media: Media) -> np.ndarray:
        return from_s16le(media.payload)

    def encode_audio(self, samples: np.ndarray) -> bytes:
        return to_s16le(samples)

    @abstractmethod
    def _control(self, fields: dict) -> Inbound | None:
        """One text message's value; until the start, the start."""
