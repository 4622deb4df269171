"""Streaming containers: one continuous stream per response, decodable, with no seams."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from media.containers import (
    FORMATS,
    STREAMING_SIZE,
    OggOpusEncoder,
    UnsupportedFormatError,
    open_encoder,
)
from media.ogg import ogg_crc
from media.pcm import to_s16le
from tests.media.audio import chunks, decode, encode_stream, high_band_energy, sine

ODD_CHUNKS = (37, 1000, 4410)
LOSSY = ("mp3", "opus", "aac")
# Extra decoded audio allowed beyond the input: one codec frame plus the encoder's priming, in samples.
EXTRA = {"mp3": 1152 + 1105, "aac": 1024 + 1024, "opus": 0, "flac": 0, "wav": 0}


@pytest.mark.parametrize("rate", [22050, 24000, 16000, 44100])
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_decodes_to_the_expected_duration_and_rate(fmt: str, rate: int) -> None:
    audio = sine(rate, 1.5)
    data = encode_stream(open_encoder(fmt, rate), chunks(audio, ODD_CHUNKS))
    decoded, decoded_rate = decode(data)
    expected_rate = 48000 if fmt == "opus" else rate  # Opus always decodes at 48 kHz
    assert decoded_rate == expected_rate
    expected = len(audio) * expected_rate // rate
    assert expected <= len(decoded) <= expected + EXTRA[fmt] * expected_rate // rate, (
        f"{fmt}: {len(decoded)} samples decoded for {expected}"
    )


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_lossless_formats_give_back_the_16_bit_samples(fmt: str) -> None:
    audio = sine(24000, 0.5, freq=1000.0, amplitude=0.9)
    decoded, _ = decode(encode_stream(open_encoder(fmt, 24000), chunks(audio, ODD_CHUNKS)))
    assert np.array_equal(np.rint(decoded * 32768).astype(np.int16), np.frombuffer(to_s16le(audio), "<i2"))


def test_pcm_is_raw_s16le_with_no_header() -> None:
    audio = sine(24000, 0.3)
    data = encode_stream(open_encoder("pcm", 24000), chunks(audio, ODD_CHUNKS))
    assert data == to_s16le(audio)


def test_streamed_wav_has_one_header_with_the_size_sentinel() -> None:
    encoder = open_encoder("wav", 24000)
    data = encode_stream(encoder, chunks(sine(24000, 0.5), ODD_CHUNKS))
    riff_size, data_size = struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<I", data, 40)[0]
    assert (riff_size, data_size) == (STREAMING_SIZE, STREAMING_SIZE)
    assert data.count(b"RIFF") == 1 and data[36:40] == b"data"
    assert struct.unpack_from("<I", data, 24)[0] == 24000
    assert len(data) == 44 + 2 * 12000


def test_a_wav_stream_with_no_audio_is_still_a_header() -> None:
    assert len(open_encoder("wav", 16000).finish()) == 44


@pytest.mark.parametrize("rate", [22050, 24000])
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_chunk_seams_leave_no_trace(fmt: str, rate: int) -> None:
    """Odd chunk sizes decode (without errors) to the same audio as the signal encoded whole."""
    audio = sine(rate, 2.0)
    whole, out_rate = decode(encode_stream(open_encoder(fmt, rate), [audio]))
    for sizes in [(37,), (1000,), (4410,), ODD_CHUNKS]:
        chunked, _ = decode(encode_stream(open_encoder(fmt, rate), chunks(audio, sizes)))
        assert len(chunked) == len(whole)
        assert np.abs(chunked - whole).max() < 1e-3, f"{fmt} chunked as {sizes} differs from whole"
        clicks = high_band_energy(chunked, out_rate)[4:-4].max()
        assert clicks <= 10 * high_band_energy(whole, out_rate)[4:-4].max() + 1e-9


@pytest.mark.parametrize("fmt", LOSSY)
def test_the_click_detector_sees_per_chunk_encoders(fmt: str) -> None:
    """The seam check above can fail: one encoder per chunk (the mistake it guards against) trips it."""
    audio = sine(24000, 2.0)
    whole, rate = decode(encode_stream(open_encoder(fmt, 24000), [audio]))
    glued = b"".join(encode_stream(open_encoder(fmt, 24000), [piece]) for piece in chunks(audio, (4410,)))
    naive, _ = decode(glued)
    assert high_band_energy(naive, rate)[4:-4].max() > 10 * high_band_energy(whole, rate)[4:-4].max()


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac"])
def test_no_per_chunk_headers(fmt: str) -> None:
    data = encode_stream(open_encoder(fmt, 24000), chunks(sine(24000, 1.0), ODD_CHUNKS))
    assert data.count(b"ID3") == 0 and data.count(b"Xing") == 0 and data.count(b"Info") == 0
    assert data.count(b"fLaC") == (1 if fmt == "flac" else 0)


def _ogg_pages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(flags, granule, payload) for every page, checking capture patterns and CRCs."""
    pages, offset = [], 0
    while offset < len(data):
        assert data[offset : offset + 4] == b"OggS", f"no page at byte {offset}"
        flags, granule = data[offset + 5], struct.unpack_from("<q", data, offset + 6)[0]
        count = data[offset + 26]
        size = 27 + count + sum(data[offset + 27 : offset + 27 + count])
        page = bytearray(data[offset : offset + size])
        crc = struct.unpack_from("<I", page, 22)[0]
        page[22:26] = bytes(4)
        assert crc == ogg_crc(bytes(page)), f"bad CRC on the page at byte {offset}"
        pages.append((flags, granule, bytes(page[27 + count :])))
        offset += size
    return pages


def test_ogg_opus_pages_follow_rfc_7845() -> None:
    audio = sine(24000, 1.37)
    data = encode_stream(open_encoder("opus", 24000), chunks(audio, ODD_CHUNKS))
    pages = _ogg_pages(data)
    assert pages[0][2].startswith(b"OpusHead") and pages[0][0] == 0x02  # the first page: ID header alone, BOS
    assert pages[1][2].startswith(b"OpusTags")
    assert all(flags == 0 for flags, _, _ in pages[1:-1]) and pages[-1][0] == 0x04  # EOS only at the end
    assert data.count(b"OpusHead") == 1
    pre_skip = struct.unpack_from("<H", pages[0][2], 10)[0]
    assert struct.unpack_from("<I", pages[0][2], 12)[0] == 24000  # the input rate, for information
    granules = [granule for _, granule, _ in pages[2:]]
    assert granules == sorted(granules)
    assert granules[-1] == pre_skip + len(audio) * 2  # the end trims the last frame's padding exactly


def test_ogg_opus_sends_a_page_as_soon_as_a_call_makes_packets() -> None:
    encoder = OggOpusEncoder(48000)
    assert encoder.encode(np.zeros(500, np.float32)) == b""  # not yet a 20 ms frame
    first = encoder.encode(np.zeros(500, np.float32))
    assert first.count(b"OggS") == 3  # ID header, comment header, one audio page
    assert encoder.encode(np.zeros(960 * 3, np.float32)).count(b"OggS") == 1


def test_a_higher_bitrate_makes_a_bigger_stream() -> None:
    audio = sine(24000, 2.0) + np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32)
    for fmt in LOSSY:
        small = encode_stream(open_encoder(fmt, 24000, bitrate=32000), [audio])
        large = encode_stream(open_encoder(fmt, 24000, bitrate=96000), [audio])
        assert len(large) > 1.5 * len(small), fmt


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg; codecs=opus"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm"),
    ],
)
def test_media_types(fmt: str, media_type: str) -> None:
    assert open_encoder(fmt, 24000).media_type == media_type


def test_unknown_format_is_a_value_error_naming_the_choices() -> None:
    with pytest.raises(UnsupportedFormatError, match="'ogg'.*mp3, opus, aac, flac, wav, pcm"):
        open_encoder("ogg", 24000)
    assert issubclass(UnsupportedFormatError, ValueError)
    assert set(FORMATS) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}


@pytest.mark.parametrize(("fmt", "bitrate"), [("mp3", 400000), ("mp3", 4000), ("opus", 1000), ("opus", 600000)])
def test_bitrates_out_of_range_are_value_errors(fmt: str, bitrate: int) -> None:
    with pytest.raises(ValueError, match="bitrate"):
        open_encoder(fmt, 24000, bitrate=bitrate)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_non_positive_rate_is_a_value_error(fmt: str) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        open_encoder(fmt, 0)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_a_stream_with_no_audio_is_still_a_valid_file(fmt: str) -> None:
    data = open_encoder(fmt, 24000).finish()
    if fmt == "aac":
        assert data == b""  # ADTS has no file header: no frames, no bytes
        return
    decoded, rate = decode(data)
    assert len(decoded) <= EXTRA[fmt] * rate // 24000


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac", "mp3"])
def test_output_rate_resamples_the_stream(fmt: str) -> None:
    audio = sine(22050, 1.0, freq=1000.0)
    encoder = open_encoder(fmt, 22050, output_rate=24000)
    assert encoder.sample_rate == 22050
    data = encode_stream(encoder, chunks(audio, ODD_CHUNKS))
    if fmt == "pcm":
        decoded, rate = np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24000
    else:
        decoded, rate = decode(data)
    assert rate == 24000
    assert 24000 <= len(decoded) <= 24000 + EXTRA.get(fmt, 0)
    spectrum = np.abs(np.fft.rfft(decoded[:24000]))
    assert abs(np.fft.rfftfreq(24000, 1 / 24000)[spectrum.argmax()] - 1000) <= 1
