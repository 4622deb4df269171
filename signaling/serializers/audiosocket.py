"""Asterisk AudioSocket frames: one type byte, a 2-byte big-endian length, the payload.

0x00 hangup, 0x01 the call's UUID (16 bytes; the first frame, and only
then), 0x03 a DTMF digit, 0x10 signed 16-bit little-endian mono audio at
8 kHz (0x11-0x16: 12, 16, 24, 32, 44.1 and 48 kHz), 0xff error. The
dialect has no marks and no clear: Asterisk plays what it is sent at once.
"""

from __future__ import annotations

import struct
import uuid

import numpy as np

from media.pcm import from_s16le, to_s16le
from signaling.serializers.base import (
    CarrierSerializer,
    Dtmf,
    Inbound,
    Media,
    Message,
    Problem,
    ProtocolViolation,
    Start,
    Stop,
)

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
AUDIO_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000}
AUDIO_TYPES = {rate: kind for kind, rate in AUDIO_RATES.items()}
HEADER = struct.Struct(">BH")


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class AudioSocketSerializer(CarrierSerializer):
    """``sample_rate`` is what we send at: the rate of the caller's audio, once the call learns it."""

    name = "AudioSocket"

    def __init__(self, sample_rate: int = 8000) -> None:
        self.sample_rate = sample_rate
        self._started = False

    def decode(self, message: Message) -> Inbound | None:
        kind, length = HEADER.unpack_from(message)
        payload = bytes(message[HEADER.size : HEADER.size + length])
        if not self._started:
            if kind != UUID or len(payload) != 16:
                got = f"got type 0x{kind:02x}, {len(payload)} bytes"
                raise ProtocolViolation(f"the first frame must be a 16-byte UUID ({got})")
            self._started = True
            call_id = str(uuid.UUID(bytes=payload))
            return Start(call_id, call_id)
        if kind in AUDIO_RATES:
            if len(payload) % 2:
                raise ProtocolViolation(f"audio frame with an odd length ({len(payload)} bytes)")
            return Media(payload, len(payload) / 2 / AUDIO_RATES[kind], AUDIO_RATES[kind])
        if kind == HANGUP:
            return Stop()
        if kind == DTMF:
            return Dtmf(payload[:1].decode("ascii", errors="replace"))
        if kind == ERROR:
            return Problem(f"asterisk reported error {payload.hex() or 'without a code'}")
        raise ProtocolViolation(f"unknown frame type 0x{kind:02x}")

    def decode_audio(self, media: Media) -> np.ndarray:
        return from_s16le(media.payload)

    def encode_audio(self, samples: np.ndarray) -> bytes:
        return frame(AUDIO_TYPES[self.sample_rate], to_s16le(samples))

    def encode_hangup(self) -> bytes:
        return frame(HANGUP)

    def encode_error(self) -> bytes:
        return frame(ERROR)
