"""Test signals and a strict decoder for checking encoded streams."""

from __future__ import annotations

import io
from collections.abc import Iterable

import av
import numpy as np

from media.containers import StreamEncoder


def sine(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chunks(samples: np.ndarray, sizes: Iterable[int]) -> list[np.ndarray]:
    """``samples`` cut into consecutive pieces, cycling through ``sizes``."""
    sizes = list(sizes)
    out, start, i = [], 0, 0
    while start < len(samples):
        out.append(samples[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return out


def encode_stream(encoder: StreamEncoder, pieces: Iterable[np.ndarray]) -> bytes:
    return b"".join(encoder.encode(piece) for piece in pieces) + encoder.finish()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Every sample in ``data`` as float32 mono, and the decoded rate; any decode error or FFmpeg error log fails."""
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs, av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            frames = [frame.to_ndarray() for frame in container.decode(stream)]
            rate = stream.codec_context.sample_rate
    finally:
        av.logging.set_level(None)
    errors = [message for level, _, message in logs if level <= av.logging.ERROR]
    assert not errors, f"FFmpeg reported errors while decoding: {errors}"
    samples = np.concatenate([frame.reshape(-1) for frame in frames]) if frames else np.zeros(0, np.float32)
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32), rate


def high_band_energy(samples: np.ndarray, rate: int, cutoff: float = 4000.0, window: int = 512) -> np.ndarray:
    """Per-window energy above ``cutoff``: a click or gap shows as a spike where a pure tone has none."""
    count = len(samples) // window
    frames = samples[: count * window].reshape(count, window) * np.hanning(window)
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    band = np.fft.rfftfreq(window, 1 / rate) >= cutoff
    return spectrum[:, band].sum(axis=1)
