"""Uploaded audio files (bytes) to float32 mono at their own rate, via PyAV.

Uploads are untrusted: every failure becomes an ``AudioDecodeError`` whose
message a client can act on, decoding stops at a duration cap (a small file
can expand to hours of audio), and only plain audio demuxers are allowed
(playlist or concat demuxers would open other files or URLs).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import NamedTuple

import av
import numpy as np

DEFAULT_MAX_SECONDS = 120.0
# Demuxer names as FFmpeg lists them; a demuxer is allowed if any of its names is here.
_AUDIO_DEMUXERS = (
    "wav,w64,rf64,aiff,caf,au,mp3,flac,ogg,mov,mp4,m4a,matroska,webm,aac,ac3,eac3,amr,wv,ape,asf,tta,mpc,mpc8"
)
# Probing reads at most this much of the upload to guess its format.
_PROBE_BYTES = 1 << 20
_MIN_RATE, _MAX_RATE = 1000, 384000


class AudioDecodeError(ValueError):
    """The upload is not audio we can use; the message says why, for the client."""


class DecodedAudio(NamedTuple):
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int


def decode_audio(data: bytes, *, max_seconds: float = DEFAULT_MAX_SECONDS) -> DecodedAudio:
    """The audio in ``data`` (any container FFmpeg knows), channels averaged to mono, at its native rate."""
    if not data:
        raise AudioDecodeError("the audio file is empty")
    try:
        container = av.open(
            io.BytesIO(data),
            "r",
            container_options={"format_whitelist": _AUDIO_DEMUXERS, "probesize": str(_PROBE_BYTES)},
            metadata_errors="ignore",
        )
    except av.error.EOFError as error:
        raise AudioDecodeError("the audio file is truncated: it ends before its first audio") from error
    except (av.FFmpegError, ValueError) as error:
        raise AudioDecodeError("not a recognised audio file (expected wav, mp3, flac, ogg, m4a, webm, ...)") from error
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        return _decode_stream(container, container.streams.audio[0], max_seconds)


def _decode_stream(container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float) -> DecodedAudio:
    chunks: list[np.ndarray] = []
    rate = 0
    total = 0
    for frame in _readable_frames(container, stream):
        if not rate:
            rate = frame.sample_rate
            if not _MIN_RATE <= rate <= _MAX_RATE:
                raise AudioDecodeError(f"unsupported sample rate {rate} Hz (allowed {_MIN_RATE}-{_MAX_RATE})")
        elif frame.sample_rate != rate:
            raise AudioDecodeError("the sample rate changes mid-file; send audio with one rate")
        chunks.append(_mono_float32(frame))
        total += frame.samples
        if total > max_seconds * rate:
            raise AudioDecodeError(f"the audio is longer than the {max_seconds:g} s limit")
    if not total:
        raise AudioDecodeError("the file contains no decodable audio (corrupt, truncated or empty)")
    return DecodedAudio(np.concatenate(chunks), rate)


def _readable_frames(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    """Frames as far as the file is readable, the way players treat damage.

    A packet that fails to decode is skipped; a container that breaks off
    (truncated, damaged) ends the audio there.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.FFmpegError):
            return
        try:
            yield from packet.decode()
        except av.FFmpegError:
            continue


_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _mono_float32(frame: av.AudioFrame) -> np.ndarray:
    """One frame's samples, any sample format and channel count, as float32 mono."""
    fmt = frame.format
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels or 1
    if not fmt.is_planar:
        samples = samples.reshape(-1, channels).T
    base = fmt.packed.name
    if base in _INT_SCALE:
        offset = 128.0 if base == "u8" else 0.0
        samples = (samples.astype(np.float64) - offset) / _INT_SCALE[base]
    return np.clip(np.nan_to_num(samples.mean(axis=0)), -1.0, 1.0).astype(np.float32)
