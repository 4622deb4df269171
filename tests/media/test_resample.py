"""Streaming resampling: chunks of any size give the signal resampled whole."""

from __future__ import annotations

import numpy as np
import pytest

from media.resample import StreamResampler, resample, supported_rate
from tests.media.audio import chunks, sine

RATE_PAIRS = [(22050, 24000), (24000, 48000), (22050, 48000), (48000, 8000), (22050, 16000), (16000, 16000)]


def _stream(samples: np.ndarray, in_rate: int, out_rate: int, sizes: tuple[int, ...]) -> np.ndarray:
    resampler = StreamResampler(in_rate, out_rate)
    parts = [resampler.process(piece) for piece in chunks(samples, sizes)]
    return np.concatenate([*parts, resampler.flush()])


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_chunked_equals_whole_with_the_right_length(in_rate: int, out_rate: int) -> None:
    audio = sine(in_rate, 1.3, freq=300.0)
    whole = resample(audio, in_rate, out_rate)
    assert len(whole) == round(len(audio) * out_rate / in_rate)
    for sizes in [(1,), (37,), (160, 1000, 4410), (len(audio),)]:
        streamed = _stream(audio, in_rate, out_rate, sizes)
        assert streamed.dtype == np.float32
        assert len(streamed) == len(whole), sizes
        assert np.abs(streamed - whole).max() < 1e-4, sizes


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_the_tone_keeps_its_pitch_and_level(in_rate: int, out_rate: int) -> None:
    out = _stream(sine(in_rate, 1.0, freq=1000.0, amplitude=0.5), in_rate, out_rate, (441,))
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak = np.fft.rfftfreq(len(out), 1 / out_rate)[spectrum.argmax()]
    assert abs(peak - 1000.0) < 2.0
    middle = out[len(out) // 4 : -len(out) // 4]
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.01


def test_an_empty_stream_flushes_empty() -> None:
    resampler = StreamResampler(22050, 48000)
    assert len(resampler.process(np.zeros(0, np.float32))) == 0
    assert len(resampler.flush()) == 0


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 48000)


@pytest.mark.parametrize(
    ("rate", "expected"), [(24000, 24000), (22050, 24000), (44100, 48000), (96000, 48000), (7000, 8000)]
)
def test_supported_rate_goes_up_to_the_next_rate_a_codec_takes(rate: int, expected: int) -> None:
    assert supported_rate(rate, {8000, 12000, 16000, 24000, 48000}) == expected
