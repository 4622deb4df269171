"""Assertions that audio is speech: duration, level, pauses, zero crossings and spectrum."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV file to float samples and its rate."""
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getsampwidth() == 2, "expected 16-bit PCM"
        assert wav.getnchannels() == 1, "expected mono"
        frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0, wav.getframerate()


def decode_b64_wav(text: str) -> tuple[np.ndarray, int]:
    return decode_wav(base64.b64decode(text))


def window_levels_db(samples: np.ndarray, sample_rate: int, window_s: float = 0.02) -> np.ndarray:
    size = int(sample_rate * window_s)
    count = len(samples) // size
    windows = samples[: count * size].reshape(count, size)
    return 20 * np.log10(np.sqrt((windows**2).mean(axis=1)) + 1e-9)


def speech_band_fraction(samples: np.ndarray, sample_rate: int) -> float:
    """Share of the energy between 80 Hz and 4 kHz, where voiced speech lives."""
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    band = (freqs >= 80) & (freqs <= 4000)
    return float(spectrum[band].sum() / (spectrum.sum() + 1e-12))


def assert_speech_like(samples: np.ndarray, sample_rate: int, *, min_seconds: float, max_seconds: float) -> None:
    duration = len(samples) / sample_rate
    assert min_seconds <= duration <= max_seconds, f"duration {duration:.2f} s not in [{min_seconds}, {max_seconds}]"
    rms_db = 20 * np.log10(np.sqrt(np.mean(samples**2)) + 1e-9)
    assert rms_db > -35, f"too quiet for speech: {rms_db:.1f} dBFS"
    levels = window_levels_db(samples, sample_rate)
    active = float((levels > rms_db - 20).mean())
    assert 0.3 < active < 0.99, f"speech has both sound and pauses; active share {active:.2f}"
    crossings = float(np.mean(np.abs(np.diff(np.signbit(samples).astype(np.int8)))))
    assert 0.01 < crossings < 0.35, f"zero-crossing rate {crossings:.3f} is not speech-like"
    band = speech_band_fraction(samples, sample_rate)
    assert band > 0.6, f"only {band:.2f} of the energy is in the speech band"


def words(text: str) -> int:
    return len(text.split())


def plausible_seconds(text: str) -> tuple[float, float]:
    """Duration bounds for English text read at normal speed (1.3 to 5 words a second)."""
    n = words(text)
    return n / 5.0, n / 1.3 + 0.5


def decode_container(data: bytes, fmt: str | None = None) -> tuple[np.ndarray, int]:
    """Decode any container with PyAV (the reference decoder here); mono float32 and the rate."""
    import av

    with av.open(io.BytesIO(data), format=fmt) as container:
        stream = container.streams.audio[0]
        pieces = []
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            scale = float(np.iinfo(array.dtype).max + 1) if array.dtype.kind == "i" else 1.0
            channels = len(frame.layout.channels)
            mono = array.mean(axis=0) if frame.format.is_planar else array.reshape(-1, channels).mean(axis=1)
            pieces.append((mono / scale).astype(np.float32))
            rate = frame.sample_rate
    return np.concatenate(pieces), rate
