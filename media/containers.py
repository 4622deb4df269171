"""Streaming audio containers: one encoder per response, bytes out as PCM comes in.

Every encoder takes float32 mono chunks of any length and returns whatever
bytes are ready; ``finish`` flushes the rest. No per-chunk headers: a WAV
stream carries one header with the streaming size sentinel.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod

import numpy as np

from media.pcm import to_s16le

STREAMING_SIZE = 0xFFFFFFFF  # "size unknown": what a streamed WAV header carries


def wav_header(sample_rate: int, data_bytes: int | None = None, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header; ``data_bytes=None`` writes the streaming sentinel."""
    block_align = channels * 2
    if data_bytes is None:
        riff_size = data_size = STREAMING_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
        + struct.pack("<4sI", b"data", data_size)
    )


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete WAV file (exact sizes) for audio known in full."""
    pcm = to_s16le(samples)
    return wav_header(sample_rate, len(pcm)) + pcm


class StreamEncoder(ABC):
    """Turns a stream of PCM chunks into one continuous encoded stream."""

    media_type: str

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    @abstractmethod
    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready after adding ``samples`` (may be empty)."""

    def finish(self) -> bytes:
        """The remaining bytes at the end of the stream."""
        return b""


class PcmEncoder(StreamEncoder):
    """Raw s16le mono, no header."""

    media_type = "audio/pcm"

    def encode(self, samples: np.ndarray) -> bytes:
        return to_s16le(samples)


class WavEncoder(StreamEncoder):
    """WAV with the streaming size sentinel: one header, then raw PCM."""

    media_type = "audio/wav"

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self._header_sent = False

    def encode(self, samples: np.ndarray) -> bytes:
        if self._header_sent:
            return to_s16le(samples)
        self._header_sent = True
        return wav_header(self.sample_rate) + to_s16le(samples)

    def finish(self) -> bytes:
        return b"" if self._header_sent else wav_header(self.sample_rate)
