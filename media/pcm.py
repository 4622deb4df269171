"""Conversions between float32 samples (the engine's output) and 16-bit PCM."""

from __future__ import annotations

import numpy as np


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipped and rounded."""
    return np.clip(np.rint(samples * 32767.0), -32768, 32767).astype(np.int16)


def to_s16le(samples: np.ndarray) -> bytes:
    """Float samples to little-endian signed 16-bit bytes."""
    return to_int16(samples).astype("<i2", copy=False).tobytes()


def from_s16le(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit bytes to float32 samples in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
