"""Cost of the media layer's encoders on this machine.

Prints, for each streaming container: CPU time per second of audio and the
time to the first output byte; the alternatives we chose against (PyAV's
libmp3lame and LAME -q 2 beside lameenc, FFmpeg's default AAC coder beside the
fast one); Opus packet encoding per 20 ms frame at several bitrates; and the
resampler and G.711. The input is a synthetic speech-like signal (voiced
harmonics under moving formants, fricative noise, pauses), so the figures need
no model.

    .venv/bin/python bench/containers.py [--seconds 10] [--rate 24000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from media.containers import AacEncoder, AvEncoder, Mp3Encoder, StreamEncoder, open_encoder
from media.g711 import ulaw_encode
from media.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusEncoder
from media.pcm import to_int16
from media.resample import StreamResampler


def speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Syllables of voiced sound (f0 100-200 Hz, formants sweeping), fricative bursts and pauses."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 5.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = (500 + 300 * np.sin(2 * np.pi * 1.9 * t), 1500 + 600 * np.sin(2 * np.pi * 1.3 * t), 2500)
    voiced = np.zeros(n)
    for harmonic in range(1, 40):
        freq = harmonic * f0
        gain = sum(1 / (1 + ((freq - f) / 120) ** 2) for f in formants) / harmonic**0.5
        voiced += np.where(freq < rate / 2, gain * np.sin(harmonic * phase), 0)
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    pauses = (np.sin(2 * np.pi * 0.4 * t) > -0.8).astype(float)
    fricative = rng.normal(0, 0.15, n) * (np.sin(2 * np.pi * 4 * t + 2.5) > 0.9)
    signal = (voiced / np.abs(voiced).max() * syllables + fricative) * pauses
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


class PyAvMp3Encoder(AvEncoder):
    """The alternative to lameenc: FFmpeg's libmp3lame through the same PyAV muxing path."""

    media_type = "audio/mpeg"
    container, codec, sample_format = "mp3", "libmp3lame", "fltp"
    rates = Mp3Encoder.RATES
    default_bitrate = Mp3Encoder.DEFAULT_BITRATE


class LameQ2Encoder(Mp3Encoder):
    QUALITY = 2


class AacTwoLoopEncoder(AacEncoder):
    """FFmpeg's default AAC coder, for comparison with the constant-quantiser one the gateway uses."""

    codec_options = {}


def _pieces(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def encode_cost_ms(make: Callable[[], StreamEncoder], audio: np.ndarray, rate: int, repeats: int) -> float:
    """Median CPU milliseconds per second of audio, fed in 100 ms chunks."""
    pieces = _pieces(audio, rate // 10)
    costs = []
    for _ in range(repeats):
        started = time.process_time()
        encoder = make()
        for piece in pieces:
            encoder.encode(piece)
        encoder.finish()
        costs.append((time.process_time() - started) * 1000 / (len(audio) / rate))
    return statistics.median(costs)


def first_byte(make: Callable[[], StreamEncoder], audio: np.ndarray, rate: int, repeats: int) -> tuple[float, float]:
    """Median wall milliseconds from opening the encoder to its first bytes, and the audio fed by then (ms).

    Audio goes in as 20 ms chunks as fast as the encoder takes it.
    """
    walls, fed = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder = make()
        for count, piece in enumerate(_pieces(audio, rate // 50), start=1):
            if encoder.encode(piece):
                break
        walls.append((time.perf_counter() - started) * 1000)
        fed.append(count * 20.0)
    return statistics.median(walls), statistics.median(fed)


def opus_us_per_frame(bitrate: int, audio48: np.ndarray) -> tuple[float, float, float]:
    """Median µs per 20 ms frame to encode and to decode, and the bitrate actually produced."""
    frames = [f for f in _pieces(audio48, FRAME_SAMPLES) if len(f) == FRAME_SAMPLES]
    encoder, decoder = OpusEncoder(bitrate), OpusDecoder()
    started = time.process_time()
    packets = [encoder.encode(frame) for frame in frames]
    encode_us = (time.process_time() - started) * 1e6 / len(frames)
    started = time.process_time()
    for packet in packets:
        decoder.decode(packet)
    decode_us = (time.process_time() - started) * 1e6 / len(frames)
    kbps = sum(map(len, packets)) * 8 / (len(frames) * FRAME_SAMPLES / SAMPLE_RATE) / 1000
    return encode_us, decode_us, kbps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per run")
    parser.add_argument("--rate", type=int, default=24000, help="input rate (the engine's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rate = args.rate
    audio = speech_like(rate, args.seconds)

    print(f"Streaming containers: {args.seconds:g} s of speech-like audio at {rate} Hz, median of {args.repeats}")
    print(f"{'format':<22}{'CPU ms per audio s':>20}{'first byte ms':>15}{'audio fed ms':>14}{'kbit/s':>9}")
    rows: list[tuple[str, Callable[[], StreamEncoder]]] = [
        (fmt, lambda fmt=fmt: open_encoder(fmt, rate)) for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm")
    ]
    rows += [
        ("mp3 lameenc q2", lambda: LameQ2Encoder(rate)),
        ("mp3 PyAV libmp3lame", lambda: PyAvMp3Encoder(rate)),
        ("aac two-loop coder", lambda: AacTwoLoopEncoder(rate)),
    ]
    for name, make in rows:
        cost = encode_cost_ms(make, audio, rate, args.repeats)
        wall, fed = first_byte(make, audio, rate, args.repeats)
        encoder = make()
        size = sum(len(encoder.encode(piece)) for piece in _pieces(audio, rate // 10)) + len(encoder.finish())
        kbps = size * 8 / args.seconds / 1000
        print(f"{name:<22}{cost:>20.2f}{wall:>15.2f}{fed:>14.0f}{kbps:>9.1f}")

    audio48 = speech_like(SAMPLE_RATE, args.seconds)
    print("\nOpus packets (48 kHz mono, 20 ms, application voip)")
    print(f"{'bitrate':<22}{'encode µs/frame':>20}{'decode µs/frame':>16}{'kbit/s out':>12}")
    for bitrate in (16000, 24000, 32000, 48000, 64000):
        results = [opus_us_per_frame(bitrate, audio48) for _ in range(args.repeats)]
        encode_us = statistics.median(r[0] for r in results)
        decode_us = statistics.median(r[1] for r in results)
        print(f"{bitrate // 1000:>3} kbit/s{'':<14}{encode_us:>20.0f}{decode_us:>16.0f}{results[0][2]:>12.1f}")

    print("\nOther per-stream work")
    resampler_costs = []
    for in_rate in (22050, 24000):
        source = speech_like(in_rate, args.seconds)
        started = time.process_time()
        resampler = StreamResampler(in_rate, SAMPLE_RATE)
        for piece in _pieces(source, in_rate // 50):
            resampler.process(piece)
        resampler.flush()
        resampler_costs.append((in_rate, (time.process_time() - started) * 1000 / args.seconds))
    for in_rate, cost in resampler_costs:
        print(f"resample {in_rate} -> 48000 (20 ms chunks): {cost:.2f} CPU ms per audio s")
    frame8k = to_int16(speech_like(8000, 0.02))
    started = time.process_time()
    for _ in range(10000):
        ulaw_encode(frame8k)
    print(f"G.711 mu-law encode: {(time.process_time() - started) * 100:.1f} µs per 20 ms frame")


if __name__ == "__main__":
    main()
