"""Opus packets for WebRTC: 20 ms mono frames at 48 kHz, one packet each, via PyAV's bundled libopus.

The default bitrate is 32 kbit/s: for mono speech Opus is near transparent
there (it runs in hybrid SILK+CELT mode up to fullband), it is what browsers
send for a mono voice track, and at 80 bytes a packet it leaves room on
poor links. Callers that need less (cellular) or more (music) pass a bitrate.
"""

from __future__ import annotations

import av
import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
DEFAULT_BITRATE = 32000


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    return frame


class OpusEncoder:
    """One Opus stream: float32 frames of exactly 960 samples in, one packet per frame out.

    The encoder's state carries from frame to frame, so frames must belong to
    one continuous stream. ``pre_skip`` is libopus's lookahead: the decoder's
    first output samples that precede the audio (Ogg/Opus headers carry it).
    """

    def __init__(self, bitrate: int = DEFAULT_BITRATE, *, application: str = "voip") -> None:
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000-510000 bit/s, got {bitrate}")
        self.bitrate = bitrate
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"
        self._codec.format = "flt"
        self._codec.bit_rate = bitrate
        self._codec.options = {"application": application, "frame_duration": "20"}
        self._codec.open()
        self._pts = 0
        self.pre_skip: int | None = None

    def encode(self, samples: np.ndarray) -> bytes:
        """One 20 ms frame (960 float32 samples in [-1, 1]) to one Opus packet."""
        samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        if samples.shape != (FRAME_SAMPLES,):
            raise ValueError(f"an Opus frame is {FRAME_SAMPLES} mono samples, got shape {samples.shape}")
        packets = self._codec.encode(_frame(samples, self._pts))
        self._pts += FRAME_SAMPLES
        if len(packets) != 1:
            raise RuntimeError(f"libopus returned {len(packets)} packets for one frame")
        if self.pre_skip is None:
            self.pre_skip = -packets[0].pts
        return bytes(packets[0])


class OpusDecoder:
    """Opus packets back to float32 mono at 48 kHz (for tests and loopback checks)."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"

    def decode(self, packet: bytes) -> np.ndarray:
        """The samples in one packet (960 for a 20 ms packet)."""
        frames = self._codec.decode(av.Packet(packet))
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([_to_float_mono(frame) for frame in frames])


def _to_float_mono(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray()
    if samples.dtype == np.int16:
        return samples.reshape(-1).astype(np.float32) / 32768.0
    return samples.reshape(-1).astype(np.float32, copy=False)
