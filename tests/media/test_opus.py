"""Opus packets for WebRTC: one packet per 20 ms frame, decodable, at the asked bitrate."""

from __future__ import annotations

import numpy as np
import pytest

from media.opus import DEFAULT_BITRATE, FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusEncoder
from tests.media.audio import sine


def _rich_signal(seconds: float) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    noise = np.random.default_rng(0).normal(0, 0.05, len(t))
    return (0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t) + noise).astype(np.float32)


def _frames(samples: np.ndarray) -> list[np.ndarray]:
    return [samples[i : i + FRAME_SAMPLES] for i in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


def test_one_packet_per_frame_that_decodes_back_to_the_signal() -> None:
    audio = sine(SAMPLE_RATE, 1.0, freq=440.0) + sine(SAMPLE_RATE, 1.0, freq=1200.0, amplitude=0.1)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets = [encoder.encode(frame) for frame in _frames(audio)]
    assert len(packets) == 50 and all(isinstance(p, bytes) and 0 < len(p) < 400 for p in packets)
    decoded = [decoder.decode(p) for p in packets]
    assert all(d.shape == (FRAME_SAMPLES,) and d.dtype == np.float32 for d in decoded)
    out = np.concatenate(decoded)
    skip = encoder.pre_skip
    assert skip == 312  # libopus's lookahead at 48 kHz: 2.5 ms + 4 ms
    # One continuous stream: a fresh encoder per frame would leave a lookahead gap in every frame.
    assert np.corrcoef(out[skip:], audio[: len(out) - skip])[0, 1] > 0.95


@pytest.mark.parametrize("bitrate", [16000, DEFAULT_BITRATE, 64000])
def test_packets_follow_the_bitrate(bitrate: int) -> None:
    encoder = OpusEncoder(bitrate)
    sizes = [len(encoder.encode(frame)) for frame in _frames(_rich_signal(2.0))]
    measured = np.mean(sizes) * 8 * SAMPLE_RATE / FRAME_SAMPLES
    assert 0.6 * bitrate < measured < 1.4 * bitrate


def test_frames_must_be_20_ms() -> None:
    with pytest.raises(ValueError, match="960"):
        OpusEncoder().encode(np.zeros(480, np.float32))


@pytest.mark.parametrize("bitrate", [1000, 600000])
def test_bitrate_must_be_one_opus_allows(bitrate: int) -> None:
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(bitrate)
