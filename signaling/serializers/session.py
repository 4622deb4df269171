"""Our session protocol on a WebSocket: JSON text for control and events, binary messages for audio.

Client messages are parsed by :mod:`signaling.protocol`; events go out as
their JSON. Audio goes out 20 ms per binary message: s16le PCM at the rate
the client asked for, or one Opus packet (48 kHz mono) per message. Binary
messages from the client are caller audio, counted and drained.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from media.opus import OpusEncoder
from media.pcm import to_s16le
from signaling.messages import Event
from signaling.protocol import ProtocolError, parse

PCM_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


class Codec(StrEnum):
    """The ``format`` query parameter and ``session.created``'s ``audio.format``."""

    PCM = "pcm"  # s16le at the asked rate
    OPUS = "opus"  # one 48 kHz packet per message


@dataclass(frozen=True)
class AudioFormat:
    """What the client hears: ``pcm`` (s16le at ``sample_rate``) or ``opus`` (48 kHz packets)."""

    codec: Codec = Codec.PCM
    sample_rate: int = 24000

    @classmethod
    def from_query(cls, codec: str | None, sample_rate: str | None) -> AudioFormat:
        codec = codec or "pcm"
        if codec == "opus":
            return cls(Codec.OPUS, 48000)
        if codec != "pcm":
            raise ProtocolError(f"unknown audio format '{codec}' (pcm or opus)")
        try:
            rate = int(sample_rate or 24000)
        except ValueError as error:
            raise ProtocolError(f"sample_rate must be an integer, not {sample_rate!r}") from error
        if rate not in PCM_RATES:
            raise ProtocolError(f"sample_rate {rate} not supported; choose one of {PCM_RATES}")
        return cls(Codec.PCM, rate)

    def to_dict(self) -> dict[str, Any]:
        """As ``session.created`` announces it."""
        return {"format": self.codec.value, "sample_rate": self.sample_rate, "channels": 1, "frame_ms": 20}


class SessionSerializer:
    def __init__(self, audio: AudioFormat, *, opus_bitrate: int) -> None:
        self.audio = audio
        self._encoder = OpusEncoder(bitrate=opus_bitrate) if audio.codec is Codec.OPUS else None

    @property
    def encodes_off_loop(self) -> bool:
        """Whether :meth:`encode_audio` takes long enough (Opus) to belong in a worker thread."""
        return self._encoder is not None

    def decode(self, text: str) -> dict[str, Any]:
        """One client message; raises :class:`ProtocolError`."""
        return parse(text)

    def encode_event(self, event: Event) -> str:
        return event.to_json()

    def encode_audio(self, samples: np.ndarray) -> bytes:
        return self._encoder.encode(samples) if self._encoder is not None else to_s16le(samples)
