"""Decoding uploads: every container PyAV reads, and a malformed corpus that must fail clearly."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest

from media.containers import open_encoder, wav_bytes
from media.decode import AudioDecodeError, decode_audio
from tests.media.audio import encode_stream, sine


def _av_file(container: str, codec: str, sample_format: str, samples: np.ndarray, rate: int) -> bytes:
    """A file written by FFmpeg itself: ``samples`` is (channels, n) float in [-1, 1]."""
    buffer = io.BytesIO()
    layout = "mono" if len(samples) == 1 else "stereo"
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.format = sample_format
        if sample_format.startswith("u8"):
            data = np.clip(np.rint(samples * 128 + 128), 0, 255).astype(np.uint8)
        elif sample_format.startswith("s16"):
            data = np.rint(samples * 32767).astype(np.int16)
        elif sample_format.startswith("s32"):
            data = np.rint(samples * 2147483647).astype(np.int32)
        else:
            data = samples.astype(np.float64 if sample_format.startswith("dbl") else np.float32)
        if not sample_format.endswith("p"):
            data = data.T.reshape(1, -1)  # packed: channels interleaved
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
        frame.sample_rate = rate
        output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
def test_wav_decodes_exactly_at_its_native_rate(rate: int) -> None:
    audio = sine(rate, 0.7)
    decoded = decode_audio(wav_bytes(audio, rate))
    assert decoded.sample_rate == rate and decoded.samples.dtype == np.float32
    assert np.abs(decoded.samples - audio).max() < 1e-4


def test_stereo_48k_is_averaged_to_mono() -> None:
    left, right = sine(48000, 0.5, freq=440.0, amplitude=0.4), sine(48000, 0.5, freq=1000.0, amplitude=0.2)
    data = _av_file("wav", "pcm_s16le", "s16", np.stack([left, right]), 48000)
    samples, rate = decode_audio(data)
    assert rate == 48000 and len(samples) == len(left)
    assert np.abs(samples - (left + right) / 2).max() < 1e-3


@pytest.mark.parametrize(
    ("codec", "sample_format"), [("pcm_u8", "u8"), ("pcm_s32le", "s32"), ("pcm_f32le", "flt"), ("pcm_f64le", "dbl")]
)
def test_every_sample_format_is_scaled_to_plus_minus_one(codec: str, sample_format: str) -> None:
    audio = sine(16000, 0.3, amplitude=0.5)
    samples, _ = decode_audio(_av_file("wav", codec, sample_format, audio[None], 16000))
    assert np.abs(samples - audio).max() < 0.01


@pytest.mark.parametrize(
    ("name", "container", "codec", "sample_format", "rate"),
    [
        ("m4a", "mp4", "aac", "fltp", 44100),
        ("webm", "webm", "libopus", "flt", 48000),
        ("ogg", "ogg", "libopus", "flt", 48000),
        ("mp3", "mp3", "libmp3lame", "fltp", 44100),
        ("mkv-pcm", "matroska", "pcm_s16le", "s16", 24000),
        ("aiff", "aiff", "pcm_s16be", "s16", 22050),
    ],
)
def test_common_containers_decode(name: str, container: str, codec: str, sample_format: str, rate: int) -> None:
    audio = sine(rate, 1.0)
    samples, decoded_rate = decode_audio(_av_file(container, codec, sample_format, audio[None], rate))
    assert decoded_rate == rate, name
    assert abs(len(samples) - len(audio)) <= 2048, name
    assert 0.15 < np.sqrt(np.mean(samples**2)) < 0.26, name  # the tone's level (0.3 / sqrt 2)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_our_own_streams_decode(fmt: str) -> None:
    samples, rate = decode_audio(encode_stream(open_encoder(fmt, 24000), [sine(24000, 1.0)]))
    assert rate == (48000 if fmt == "opus" else 24000)
    assert rate <= len(samples) <= rate * 1.1


def test_silence_is_decoded_not_refused() -> None:
    samples, rate = decode_audio(wav_bytes(np.zeros(16000, np.float32), 16000))
    assert rate == 16000 and len(samples) == 16000 and not samples.any()


def test_a_wav_cut_inside_its_data_gives_the_audio_that_is_there() -> None:
    audio = sine(16000, 1.0)
    data = wav_bytes(audio, 16000)
    samples, _ = decode_audio(data[: 44 + 2 * 5000])
    assert len(samples) == 5000 and np.abs(samples - audio[:5000]).max() < 1e-4


def _error(data: bytes, **kwargs: float) -> str:
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(data, **kwargs)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


def test_malformed_corpus_fails_with_clear_messages() -> None:
    wav = wav_bytes(sine(16000, 1.0), 16000)
    assert "empty" in _error(b"")
    assert "not a recognised audio file" in _error(wav[:30])  # header cut short
    assert "no decodable audio" in _error(wav[:44])  # header only
    assert "not a recognised audio file" in _error(b"RIFX" + wav[4:])  # wrong magic
    assert "not a recognised audio file" in _error(b"hello, this is text and not audio " * 50)
    assert "not a recognised audio file" in _error(bytes(20000))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_refused(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(int(10 ** (1 + seed % 5)))
    assert _error(data)


def test_files_beyond_the_cap_are_refused() -> None:
    long_wav = wav_bytes(np.zeros(8000 * 121, np.float32), 8000)
    assert "120 s limit" in _error(long_wav)
    assert "1.5 s limit" in _error(wav_bytes(sine(16000, 2.0), 16000), max_seconds=1.5)
    assert len(decode_audio(wav_bytes(sine(16000, 2.0), 16000), max_seconds=2.0).samples) == 32000


def test_a_file_without_audio_is_refused() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        stream = output.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
        output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    assert "no audio stream" in _error(buffer.getvalue())


def test_the_rate_may_not_change_mid_file() -> None:
    first = encode_stream(open_encoder("mp3", 24000), [sine(24000, 0.5)])
    second = encode_stream(open_encoder("mp3", 16000), [sine(16000, 0.5)])
    assert "sample rate changes" in _error(first + second)


def test_playlists_and_other_non_audio_demuxers_are_not_opened() -> None:
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    assert _error(playlist)
    assert _error(b"ffconcat version 1.0\nfile '/etc/passwd'\n")


def test_damaged_files_never_crash_or_hang() -> None:
    rng = np.random.default_rng(0)
    started = time.monotonic()
    for fmt in ("mp3", "opus", "aac", "flac", "wav"):
        original = encode_stream(open_encoder(fmt, 24000), [sine(24000, 1.0)])
        for trial in range(12):
            damaged = bytearray(original)
            if trial % 3 == 0:
                damaged = damaged[: int(rng.integers(0, len(damaged)))]
            else:
                start = int(rng.integers(0, len(damaged)))
                damaged[start : start + int(rng.integers(1, 400))] = rng.bytes(int(rng.integers(1, 400)))
            try:
                samples, rate = decode_audio(bytes(damaged))
            except AudioDecodeError:
                continue
            assert samples.dtype == np.float32 and np.all(np.abs(samples) <= 1.0) and rate in (24000, 48000)
    assert time.monotonic() - started < 10
