"""A corpus of good and malformed uploads, built from one real speech recording.

Every entry says what a route should make of it: usable as a prompt,
decodable but unfit as a prompt, undecodable, empty, or too large. The
encoded positives are made with PyAV, the decoder the gateway itself uses,
so a refusal of one of them is the gateway's fault, not the file's.
"""

from __future__ import annotations

import enum
import io
import os
import struct
from dataclasses import dataclass

import av
import numpy as np

from media.containers import wav_bytes
from media.resample import resample


class Verdict(enum.Enum):
    PROMPT = "a usable prompt"
    UNFIT = "decodable, but not usable as a prompt"
    UNDECODABLE = "not decodable audio"
    EMPTY = "an empty upload"
    TOO_LARGE = "larger than the upload limit"


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    verdict: Verdict
    reason: str  # what a refusal's message must say (lowercase); "" where accepted or where the limit answers
    seconds: float = 0.0  # for usable prompts: how long the decoded audio is (codecs pad a little)


def corpus(speech: np.ndarray, rate: int, *, max_upload_bytes: int) -> list[Upload]:
    """The uploads, from ``speech`` (float32 mono, 2-10 s at ``rate`` >= 16 kHz)."""
    wav = wav_bytes(speech, rate)
    stereo_48k = resample(speech, rate, 48000)
    long_speech = np.tile(speech, int(40 * rate / len(speech)) + 1)
    seconds = len(speech) / rate
    not_audio = "not a recognised audio file"
    return [
        Upload("speech.wav", wav, Verdict.PROMPT, "", seconds),
        Upload("speech.mp3", encoded(speech, rate, "mp3", "libmp3lame"), Verdict.PROMPT, "", seconds),
        Upload("speech.ogg", encoded(speech, rate, "ogg", "libopus", codec_rate=48000), Verdict.PROMPT, "", seconds),
        Upload("speech.flac", encoded(speech, rate, "flac", "flac"), Verdict.PROMPT, "", seconds),
        Upload("speech.webm", encoded(speech, rate, "webm", "libopus", codec_rate=48000), Verdict.PROMPT, "", seconds),
        Upload("speech.m4a", encoded(speech, rate, "ipod", "aac"), Verdict.PROMPT, "", seconds),
        Upload("stereo-48k.wav", pcm_wav(np.stack([stereo_48k, stereo_48k * 0.5]), 48000), Verdict.PROMPT, "", seconds),
        # Players keep what a cut-off file holds; so does the gateway, and 80 % of the speech is a prompt.
        Upload("truncated-data.wav", wav[: 44 + (len(wav) - 44) * 4 // 5], Verdict.PROMPT, "", seconds * 0.8),
        Upload("truncated-header.wav", wav[:30], Verdict.UNDECODABLE, not_audio),
        Upload("header-only.wav", wav[:44], Verdict.UNDECODABLE, "no decodable audio"),
        Upload("wrong-magic.wav", b"RIFX" + wav[4:8] + b"WAVX" + wav[12:], Verdict.UNDECODABLE, not_audio),
        Upload("unknown-codec.wav", patched_wav(wav, tag=0x7777), Verdict.UNDECODABLE, "no decodable audio"),
        Upload("zero-channels.wav", patched_wav(wav, channels=0), Verdict.UNDECODABLE, "no decodable audio"),
        Upload("zero-rate.wav", patched_wav(wav, rate=0), Verdict.UNDECODABLE, not_audio),
        Upload("random.bin", os.urandom(20_000), Verdict.UNDECODABLE, not_audio),
        Upload("playlist.m3u", b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.wav\n", Verdict.UNDECODABLE, not_audio),
        Upload("concat.ffconcat", b"ffconcat version 1.0\nfile '/etc/hostname'\n", Verdict.UNDECODABLE, not_audio),
        Upload("video-only.mp4", video_only(), Verdict.UNDECODABLE, "no audio stream"),
        Upload("over-decode-cap.mp3", encoded(np.tile(speech, int(130 * rate / len(speech)) + 1), rate, "mp3", "libmp3lame", bit_rate=16000), Verdict.UNDECODABLE, "longer than"),
        Upload("empty.wav", b"", Verdict.EMPTY, "empty"),
        Upload("huge.wav", wav_bytes(np.zeros(max_upload_bytes // 2 + 1024, np.float32), 16000), Verdict.TOO_LARGE, ""),
        Upload("silence.wav", wav_bytes(np.zeros(rate * 3, np.float32), rate), Verdict.UNFIT, "silent"),
        Upload("nan.wav", float_wav(np.full(rate * 3, np.nan, np.float32), rate), Verdict.UNFIT, "silent"),
        Upload("8khz.wav", wav_bytes(resample(speech, rate, 8000), 8000), Verdict.UNFIT, "8000 hz"),
        Upload("too-short.wav", wav_bytes(speech[: rate // 2], rate), Verdict.UNFIT, "s long"),
        Upload("too-long.wav", wav_bytes(long_speech[: rate * 40], rate), Verdict.UNFIT, "s long"),
    ]  # fmt: skip


def encoded(
    samples: np.ndarray, rate: int, container: str, codec: str, *, codec_rate: int | None = None, bit_rate: int = 0
) -> bytes:
    """Mono ``samples`` in ``container`` with ``codec`` (PyAV resamples to ``codec_rate``)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=codec_rate or rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        for start in range(0, len(pcm), 4096):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 4096], format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def video_only() -> bytes:
    """An MP4 holding a few video frames and no audio at all."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def pcm_wav(channels: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV with one row of ``channels`` per channel."""
    frames = (np.clip(channels.T, -1, 1) * 32767).astype("<i2").tobytes()
    return _riff(1, len(channels), rate, 16, frames)


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    """32-bit float mono WAV (format tag 3), which may carry NaN and infinities."""
    return _riff(3, 1, rate, 32, samples.astype("<f4").tobytes())


def patched_wav(wav: bytes, *, tag: int | None = None, channels: int | None = None, rate: int | None = None) -> bytes:
    """A 44-byte-header WAV with fields of its ``fmt`` chunk overwritten."""
    old_tag, old_channels, old_rate = struct.unpack_from("<HHI", wav, 20)
    fields = struct.pack("<HHI", old_tag if tag is None else tag, old_channels if channels is None else channels, old_rate if rate is None else rate)
    return wav[:20] + fields + wav[28:]


def _riff(tag: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body
