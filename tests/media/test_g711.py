"""G.711: bit-exact against audioop where it exists, and against the standard's fixed points everywhere."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13 removed it
        audioop = None

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop is not in this Python")


@needs_audioop
def test_ulaw_matches_audioop_for_every_sample_and_code() -> None:
    assert ulaw_encode(ALL_INT16) == audioop.lin2ulaw(ALL_INT16.astype("<i2").tobytes(), 2)
    assert ulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


@needs_audioop
def test_alaw_matches_audioop_for_every_sample_and_code() -> None:
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(ALL_INT16.astype("<i2").tobytes(), 2)
    assert alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_fixed_points_of_the_standard() -> None:
    assert ulaw_encode(np.array([0, 32767, -32768], np.int16)) == bytes([0xFF, 0x80, 0x00])
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert alaw_encode(np.array([0, 32767, -32768], np.int16)) == bytes([0xD5, 0xAA, 0x2A])
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize(("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_round_trip_error_stays_within_the_log_step(encode, decode) -> None:
    restored = decode(encode(ALL_INT16)).astype(np.int32)
    error = np.abs(restored - ALL_INT16)
    # Log quantisation: the step grows with the level, at most 1/16 of it (plus the smallest step).
    assert np.all(error <= np.abs(ALL_INT16.astype(np.int32)) / 16 + 16)
    assert np.all(np.diff(decode(encode(ALL_INT16)).astype(np.int32)) >= 0)  # monotonic


def test_every_code_survives_decode_then_encode() -> None:
    # μ-law has two zeros (0xFF and 0x7F); 0 encodes to 0xFF, so 0x7F is the one code that cannot come back.
    ulaw_codes = bytes(c for c in ALL_CODES if c != 0x7F)
    assert ulaw_encode(ulaw_decode(ulaw_codes)) == ulaw_codes
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


def test_floats_are_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="to_int16"):
        ulaw_encode(np.zeros(160, np.float32))
