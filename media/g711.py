"""G.711 μ-law and A-law (telephony's 8-bit log PCM), vectorised with numpy.

``audioop`` left the standard library in Python 3.13, so the codecs live
here. Each direction is a lookup table built once from the G.711 segment
rules (65536 entries to encode, 256 to decode); encoding a 20 ms frame is
then one indexing operation. Results match ``audioop.lin2ulaw`` /
``lin2alaw`` / ``ulaw2lin`` / ``alaw2lin`` on 16-bit samples bit for bit.
"""

from __future__ import annotations

import numpy as np

_ALL_INT16 = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)  # indexed by the uint16 bit pattern
_ALL_CODES = np.arange(256, dtype=np.int32)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative integer (0 for 0)."""
    return np.frexp(values.astype(np.float64))[1]


def _ulaw_encode_table() -> np.ndarray:
    # μ-law works on 14-bit magnitudes plus a bias of 33, in 8 segments doubling in width.
    value = _ALL_INT16 >> 2
    negative = value < 0
    magnitude = np.minimum(np.abs(value) + 33, 8191)  # 8191 = the top code of the top segment
    segment = _bit_length(magnitude) - 6
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    inverted = ~_ALL_CODES & 0xFF
    magnitude = (((inverted & 0x0F) << 3) + 0x84) << ((inverted & 0x70) >> 4)
    return np.where(inverted & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    # A-law works on 13-bit values; negatives are folded onto magnitudes as -v - 1.
    value = _ALL_INT16 >> 3
    negative = value < 0
    magnitude = np.where(negative, ~value, value)
    segment = np.maximum(_bit_length(magnitude) - 5, 0)
    code = (segment << 4) | ((magnitude >> np.maximum(segment, 1)) & 0x0F)
    return (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    toggled = _ALL_CODES ^ 0x55
    segment = (toggled & 0x70) >> 4
    step = (toggled & 0x0F) << 4
    magnitude = np.where(segment == 0, step + 8, (step + 0x108) << np.maximum(segment - 1, 0))
    return np.where(toggled & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW_ENCODE = _ulaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()


def _bit_patterns(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 PCM, got {pcm.dtype}; convert floats with media.pcm.to_int16")
    return pcm.view(np.uint16)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples to μ-law bytes, one per sample."""
    return _ULAW_ENCODE[_bit_patterns(pcm)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes to int16 samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples to A-law bytes, one per sample."""
    return _ALAW_ENCODE[_bit_patterns(pcm)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes to int16 samples."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
