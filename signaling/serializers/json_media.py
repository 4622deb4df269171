"""What the JSON media-stream dialects share (Twilio, Telnyx, Plivo, Exotel): base64 audio in one of a few codecs.

Twilio and its offspring carry caller audio as base64 in JSON text messages
and name the codec and rate in their start. This holds the codecs, the sizing
of base64 audio before it is decoded (a flood costs no decoding), and the
reading of a start's fields.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping

import numpy as np

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.pcm import to_int16
from signaling.serializers.base import Media, ProtocolViolation, Undecodable
from signaling.serializers.rates import allowed_rate


class Codec(enum.Enum):
    """A payload's sample format: G.711 (one byte a sample) or 16-bit linear PCM in either byte order."""

    ULAW = "ulaw"
    ALAW = "alaw"
    L16 = "l16"  # big-endian (network order, RFC 3551), as RTP payloads carry it
    S16LE = "s16le"

    @property
    def sample_bytes(self) -> int:
        return 1 if self in (Codec.ULAW, Codec.ALAW) else 2

    def decode(self, data: bytes) -> np.ndarray:
        """Float32 samples in [-1, 1); a trailing odd byte of 16-bit audio is dropped."""
        if self is Codec.ULAW:
            return ulaw_decode(data) / np.float32(32768.0)
        if self is Codec.ALAW:
            return alaw_decode(data) / np.float32(32768.0)
        usable = len(data) - len(data) % 2
        order = ">i2" if self is Codec.L16 else "<i2"
        return np.frombuffer(data[:usable], dtype=order).astype(np.float32) / np.float32(32768.0)

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = to_int16(samples)
        if self is Codec.ULAW:
            return ulaw_encode(pcm)
        if self is Codec.ALAW:
            return alaw_encode(pcm)
        return pcm.astype(">i2" if self is Codec.L16 else "<i2", copy=False).tobytes()


def base64_media(encoded: object, codec: Codec, rate: int) -> Media:
    """Caller audio still in base64, sized from its length: 4 characters carry 3 bytes, less the padding."""
    if not isinstance(encoded, str):
        raise Undecodable("undecodable media payload ignored")
    size = len(encoded) * 3 // 4 - encoded[-2:].count("=")
    return Media(encoded, size / codec.sample_bytes / rate, rate)


def decode_base64(media: Media, codec: Codec) -> np.ndarray:
    try:
        data = base64.b64decode(media.payload, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise Undecodable("undecodable media payload ignored") from None
    return codec.decode(data)


def encode_base64(samples: np.ndarray, codec: Codec) -> str:
    return base64.b64encode(codec.encode(samples)).decode()


def string_map(value: object, what: str) -> dict[str, str]:
    """Custom parameters as strings: an object, or a list of ``{"name", "value"}`` pairs; absent is empty."""
    if value is None or value == "":
        return {}
    if isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value):
        return {str(item["name"]): str(item.get("value", "")) for item in value}
    if not isinstance(value, Mapping):
        raise ProtocolViolation(f"start with {what} that are not an object")
    return {str(name): str(item) for name, item in value.items()}


def rate_of(value: object, allowed: tuple[int, ...], default: int) -> int:
    """A start's sample rate (a number or a numeric string); one we do not carry breaks the protocol."""
    if value is None or value == "":
        return default
    return allowed_rate(value, allowed, f"unsupported sample rate {value!r}")


def object_field(start: Mapping, key: str) -> dict:
    """A start's nested object (``mediaFormat``, ...): absent or empty is ``{}``; anything else breaks the protocol."""
    value = start.get(key) or {}
    if not isinstance(value, dict):
        raise ProtocolViolation(f"start with a {key} that is not an object: {value!r}")
    return value
