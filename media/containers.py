"""Streaming audio containers: one encoder per response, bytes out as PCM comes in.

Every encoder takes float32 mono chunks of any length and returns whatever
bytes are ready; ``finish`` flushes the rest and ends the stream. No
per-chunk headers: each stream is one continuous codec stream whose state
carries across chunks (partial codec frames wait inside the encoder), and a
WAV stream carries one header with the streaming size sentinel.

Codecs run at the caller's rate where they can; otherwise the audio is
resampled (with soxr, statefully) to the next rate the codec supports.
"""

from __future__ import annotations

import secrets
import struct
import weakref
from abc import ABC, abstractmethod
from fractions import Fraction

import av
import lameenc
import numpy as np

from media import opus
from media.ogg import OggStream
from media.pcm import to_int16, to_s16le
from media.resample import StreamResampler, supported_rate

STREAMING_SIZE = 0xFFFFFFFF  # "size unknown": what a streamed WAV header carries


class UnsupportedFormatError(ValueError):
    """An audio format name no encoder here produces."""


def wav_header(sample_rate: int, data_bytes: int | None = None, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header; ``data_bytes=None`` writes the streaming sentinel."""
    block_align = channels * 2
    if data_bytes is None:
        riff_size = data_size = STREAMING_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
        + struct.pack("<4sI", b"data", data_size)
    )


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete WAV file (exact sizes) for audio known in full."""
    pcm = to_s16le(samples)
    return wav_header(sample_rate, len(pcm)) + pcm


class StreamEncoder(ABC):
    """Turns a stream of PCM chunks into one continuous encoded stream."""

    media_type: str

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate

    @abstractmethod
    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready after adding ``samples`` (may be empty)."""

    def finish(self) -> bytes:
        """The remaining bytes at the end of the stream."""
        return b""


class PcmEncoder(StreamEncoder):
    """Raw s16le mono, no header."""

    media_type = "audio/pcm"

    def encode(self, samples: np.ndarray) -> bytes:
        return to_s16le(samples)


class WavEncoder(StreamEncoder):
    """WAV with the streaming size sentinel: one header, then raw PCM."""

    media_type = "audio/wav"

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self._header_sent = False

    def encode(self, samples: np.ndarray) -> bytes:
        if self._header_sent:
            return to_s16le(samples)
        self._header_sent = True
        return wav_header(self.sample_rate) + to_s16le(samples)

    def finish(self) -> bytes:
        return b"" if self._header_sent else wav_header(self.sample_rate)


class _FrameBuffer:
    """Holds back the samples that do not yet fill a whole codec frame."""

    def __init__(self, frame_size: int) -> None:
        self.frame_size = frame_size
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The whole frames now available (a multiple of ``frame_size`` samples, maybe none)."""
        pending = np.concatenate((self._pending, samples))
        whole = len(pending) - len(pending) % self.frame_size
        self._pending = pending[whole:]
        return pending[:whole]

    def rest(self) -> np.ndarray:
        """The partial frame left at the end of the stream."""
        rest, self._pending = self._pending, np.zeros(0, np.float32)
        return rest


class Mp3Encoder(StreamEncoder):
    """MP3 (MPEG-1/2/2.5 layer III, CBR) through LAME.

    lameenc over PyAV's libmp3lame: the same LAME, a quarter of the cost per
    second of audio (bench/containers.py), and no ID3 tag in front.
    """

    media_type = "audio/mpeg"
    RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
    DEFAULT_BITRATE = 64000
    QUALITY = 5  # LAME's own default; -q 2 costs about 3x the CPU (bench/containers.py)

    def __init__(self, sample_rate: int, bitrate: int | None = None) -> None:
        super().__init__(sample_rate)
        bitrate = bitrate or self.DEFAULT_BITRATE
        if not 8000 <= bitrate <= 320000:
            raise ValueError(f"MP3 bitrate must be 8000-320000 bit/s, got {bitrate}")
        rate = supported_rate(sample_rate, self.RATES)
        self._resampler = StreamResampler(sample_rate, rate)
        self._lame = lameenc.Encoder()
        self._lame.set_channels(1)
        self._lame.set_in_sample_rate(rate)
        self._lame.set_out_sample_rate(rate)
        self._lame.set_bit_rate(bitrate // 1000)  # LAME rounds to the nearest rate its MPEG version allows
        self._lame.set_quality(self.QUALITY)

    def encode(self, samples: np.ndarray) -> bytes:
        return bytes(self._lame.encode(to_s16le(self._resampler.process(samples))))

    def finish(self) -> bytes:
        return bytes(self._lame.encode(to_s16le(self._resampler.flush()))) + bytes(self._lame.flush())


class OggOpusEncoder(StreamEncoder):
    """Ogg/Opus (RFC 7845): 20 ms packets at 48 kHz, a page out with every call that made packets.

    Granule positions count 48 kHz samples including the encoder's lookahead
    (``pre_skip``); the last page's granule trims the padding of the final
    frame, so decoders play exactly the samples that went in.
    """

    media_type = "audio/ogg; codecs=opus"
    VENDOR = b"cosyvoice-gateway"
    PAGE_PACKETS = 10  # 200 ms pages: a listener can start on the first one; 3 % container overhead at 32 kbit/s

    def __init__(self, sample_rate: int, bitrate: int | None = None) -> None:
        super().__init__(sample_rate)
        self._resampler = StreamResampler(sample_rate, opus.SAMPLE_RATE)
        self._frames = _FrameBuffer(opus.FRAME_SAMPLES)
        self._opus = opus.OpusEncoder(bitrate or opus.DEFAULT_BITRATE)
        self._ogg = OggStream(secrets.randbits(32), page_packets=self.PAGE_PACKETS)
        self._samples = 0  # audio samples in, at 48 kHz
        self._packets = 0

    def encode(self, samples: np.ndarray) -> bytes:
        resampled = self._resampler.process(samples)
        self._samples += len(resampled)
        return self._pages(self._encode_frames(self._frames.push(resampled)), last=False)

    def finish(self) -> bytes:
        resampled = self._resampler.flush()
        self._samples += len(resampled)
        whole, rest = self._frames.push(resampled), self._frames.rest()
        padding = np.zeros(-len(rest) % opus.FRAME_SAMPLES, np.float32)
        packets = self._encode_frames(np.concatenate((whole, rest, padding)))
        # The decoder drops pre_skip samples first, so the packets must reach past the audio by as much.
        while self._opus.pre_skip is None or self._packets * opus.FRAME_SAMPLES < self._opus.pre_skip + self._samples:
            packets += self._encode_frames(np.zeros(opus.FRAME_SAMPLES, np.float32))
        packets[-1] = (packets[-1][0], self._opus.pre_skip + self._samples)
        return self._pages(packets, last=True)

    def _encode_frames(self, samples: np.ndarray) -> list[tuple[bytes, int]]:
        packets = []
        for start in range(0, len(samples), opus.FRAME_SAMPLES):
            data = self._opus.encode(samples[start : start + opus.FRAME_SAMPLES])
            self._packets += 1
            packets.append((data, self._packets * opus.FRAME_SAMPLES))
        return packets

    def _pages(self, packets: list[tuple[bytes, int]], *, last: bool) -> bytes:
        if not packets:
            return b""
        headers = b""
        if self._packets == len(packets):  # the stream's first packets: the two header pages go first
            head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, self._opus.pre_skip, self.sample_rate, 0, 0)
            tags = b"OpusTags" + struct.pack("<I", len(self.VENDOR)) + self.VENDOR + struct.pack("<I", 0)
            headers = self._ogg.pages([(head, 0)], first=True) + self._ogg.pages([(tags, 0)])
        return headers + self._ogg.pages(packets, last=last)


class _MemorySink:
    """A write-only file for FFmpeg's muxer; the bytes are taken out after every call."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data, self._data = bytes(self._data), bytearray()
        return data


class AvEncoder(StreamEncoder):
    """A PyAV (FFmpeg) encoder and muxer writing into memory; subclasses name the codec.

    The muxer flushes after every packet, so bytes leave as soon as a codec
    frame is complete rather than when FFmpeg's 32 KiB I/O buffer fills.
    """

    container: str
    codec: str
    sample_format: str  # one the codec takes natively, so FFmpeg never converts
    rates: frozenset[int] | None = None  # None: any rate
    codec_options: dict[str, str] = {}
    muxer_options: dict[str, str] = {}
    default_bitrate: int | None = None

    def __init__(self, sample_rate: int, bitrate: int | None = None) -> None:
        super().__init__(sample_rate)
        rate = sample_rate if self.rates is None else supported_rate(sample_rate, self.rates)
        self._resampler = StreamResampler(sample_rate, rate)
        self._sink = _MemorySink()
        self._output = av.open(self._sink, "w", format=self.container, options={"flush_packets": "1", **self.muxer_options})
        self._stream = self._output.add_stream(self.codec, rate=rate, layout="mono")
        self._stream.codec_context.format = self.sample_format
        self._stream.codec_context.options = dict(self.codec_options)
        if bitrate or self.default_bitrate:
            self._stream.codec_context.bit_rate = bitrate or self.default_bitrate
        self._output.start_encoding()  # opens the codec (fixing its frame size) and writes the header
        # A stream abandoned midway (the client left) must still close its muxer: left to the
        # garbage collector, some PyAV versions tear the container down in an order that crashes.
        self._close = weakref.finalize(self, self._output.close)
        self._frames = _FrameBuffer(self._stream.codec_context.frame_size or 1)
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes:
        self._encode(self._frames.push(self._resampler.process(samples)))
        return self._sink.take()

    def finish(self) -> bytes:
        whole = self._frames.push(self._resampler.flush())
        self._encode(np.concatenate((whole, self._frames.rest())))
        self._output.mux(self._stream.encode(None))
        self._close()
        return self._sink.take()

    def _encode(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        if self.sample_format == "s16":
            data = to_int16(samples)
        else:
            data = np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=self.sample_format, layout="mono")
        frame.sample_rate = self._stream.codec_context.sample_rate
        frame.time_base = Fraction(1, frame.sample_rate)
        frame.pts = self._pts  # without timestamps the muxers make some up (and log it)
        self._pts += len(samples)
        self._output.mux(self._stream.encode(frame))


class AacEncoder(AvEncoder):
    """AAC-LC in ADTS frames (FFmpeg's native encoder): each frame carries its own small sync header."""

    media_type = "audio/aac"
    container, codec, sample_format = "adts", "aac", "fltp"
    rates = frozenset({7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000})
    default_bitrate = 64000
    # The constant-quantiser coder: a third of the CPU of the default two-loop search on
    # speech-like audio (bench/containers.py), with a higher SNR there, at ~20 % over the bitrate.
    codec_options = {"aac_coder": "fast"}


class FlacEncoder(AvEncoder):
    """FLAC, 16-bit. The STREAMINFO header goes out first with the length unknown (0), as streams allow."""

    media_type = "audio/flac"
    container, codec, sample_format = "flac", "flac", "s16"
    muxer_options = {"metadata_header_padding": "0"}  # no 8 KiB padding block kept for a rewrite that never comes


_LOSSY: dict[str, type[StreamEncoder]] = {"mp3": Mp3Encoder, "opus": OggOpusEncoder, "aac": AacEncoder}
_LOSSLESS: dict[str, type[StreamEncoder]] = {"flac": FlacEncoder, "wav": WavEncoder, "pcm": PcmEncoder}
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


class _Resampled(StreamEncoder):
    """Another encoder fed through a streaming resampler: the stream carries a rate the caller chose."""

    def __init__(self, sample_rate: int, inner: StreamEncoder) -> None:
        super().__init__(sample_rate)
        self.media_type = inner.media_type
        self._inner = inner
        self._resampler = StreamResampler(sample_rate, inner.sample_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        return self._inner.encode(self._resampler.process(samples))

    def finish(self) -> bytes:
        return self._inner.encode(self._resampler.flush()) + self._inner.finish()


def open_encoder(
    fmt: str, sample_rate: int, *, bitrate: int | None = None, output_rate: int | None = None
) -> StreamEncoder:
    """A fresh encoder for one stream of ``fmt``, taking audio at ``sample_rate``.

    ``bitrate`` (bit/s) applies to the lossy formats only. ``output_rate``
    is the rate the stream should carry (e.g. 24 kHz PCM for OpenAI
    clients); the audio is resampled to it. Opus always decodes at 48 kHz.
    """
    rate = output_rate or sample_rate
    if fmt in _LOSSY:
        encoder = _LOSSY[fmt](rate, bitrate=bitrate)
    elif fmt in _LOSSLESS:
        encoder = _LOSSLESS[fmt](rate)
    else:
        raise UnsupportedFormatError(f"unsupported audio format {fmt!r}; supported: {', '.join(FORMATS)}")
    return encoder if rate == sample_rate else _Resampled(sample_rate, encoder)
