"""Opus packets for WebRTC: 20 ms mono frames at 48 kHz, one packet each, via libopus.

The default bitrate is 32 kbit/s: for mono speech Opus is near transparent
there (it runs in hybrid SILK+CELT mode up to fullband), it is what browsers
send for a mono voice track, and at 80 bytes a packet it leaves room on
poor links. Callers that need less (cellular) or more (music) pass a bitrate.

The encoder calls libopus directly (through ctypes, on the copy PyAV ships),
not through PyAV's codec context: that wraps each frame in an AVFrame and a
FIFO and copies the packet out, which costs a quarter as much again as the
encoding, for every 20 ms of every call. It applies FFmpeg's libopus
settings, so the packets are byte for byte the ones FFmpeg makes, and the
call releases the GIL while it encodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
DEFAULT_BITRATE = 32000
MAX_PACKET = 4000  # bytes: libopus's recommended output buffer

_APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
# opus_encoder_ctl requests, and the values FFmpeg's libopus encoder sets by default.
_SETTINGS = {
    4010: 10,  # OPUS_SET_COMPLEXITY
    4006: 1,  # OPUS_SET_VBR
    4020: 0,  # OPUS_SET_VBR_CONSTRAINT: unconstrained
    4014: 0,  # OPUS_SET_PACKET_LOSS_PERC
    4046: 0,  # OPUS_SET_PHASE_INVERSION_DISABLED
}
_SET_BITRATE = 4002
_GET_LOOKAHEAD = 4027


@functools.cache
def _libopus() -> ctypes.CDLL:
    """The libopus PyAV's FFmpeg uses: bundled in its wheels (Linux, macOS), else the system's."""
    package = Path(av.__file__).parent
    bundled = sorted([*package.parent.glob("av.libs/*opus*"), *package.glob(".dylibs/*opus*")])
    path = str(bundled[0]) if bundled else ctypes.util.find_library("opus")
    if path is None:
        raise RuntimeError("libopus not found: PyAV's wheels bundle it; with a source build, install libopus")
    lib = ctypes.CDLL(path)
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encoder_ctl.restype = ctypes.c_int
    lib.opus_encoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]  # variadic: the value follows
    lib.opus_encode_float.restype = ctypes.c_int32
    lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    return lib


def _check(lib: ctypes.CDLL, result: int, what: str) -> int:
    if result < 0:
        raise RuntimeError(f"libopus {what}: {lib.opus_strerror(result).decode()}")
    return result


class OpusEncoder:
    """One Opus stream: float32 frames of exactly 960 samples in, one packet per frame out.

    The encoder's state carries from frame to frame, so frames must belong to
    one continuous stream (and one thread at a time). ``pre_skip`` is
    libopus's lookahead: the decoder's first output samples that precede the
    audio (Ogg/Opus headers carry it).
    """

    def __init__(self, bitrate: int = DEFAULT_BITRATE, *, application: str = "voip") -> None:
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000-510000 bit/s, got {bitrate}")
        if application not in _APPLICATIONS:
            raise ValueError(f"Opus application must be one of {sorted(_APPLICATIONS)}, got {application!r}")
        self.bitrate = bitrate
        lib = self._lib = _libopus()
        error = ctypes.c_int()
        self._state = lib.opus_encoder_create(SAMPLE_RATE, 1, _APPLICATIONS[application], ctypes.byref(error))
        _check(lib, error.value, "encoder")
        weakref.finalize(self, lib.opus_encoder_destroy, self._state)
        for request, value in ((_SET_BITRATE, bitrate), *_SETTINGS.items()):
            _check(lib, lib.opus_encoder_ctl(self._state, request, ctypes.c_int(value)), f"setting {request}")
        lookahead = ctypes.c_int()
        _check(lib, lib.opus_encoder_ctl(self._state, _GET_LOOKAHEAD, ctypes.byref(lookahead)), "lookahead")
        self.pre_skip = lookahead.value
        self._packet = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, samples: np.ndarray) -> bytes:
        """One 20 ms frame (960 float32 samples in [-1, 1]) to one Opus packet."""
        samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        if samples.shape != (FRAME_SAMPLES,):
            raise ValueError(f"an Opus frame is {FRAME_SAMPLES} mono samples, got shape {samples.shape}")
        size = self._lib.opus_encode_float(self._state, samples.ctypes.data, FRAME_SAMPLES, self._packet, MAX_PACKET)
        return ctypes.string_at(self._packet, _check(self._lib, size, "encode"))


class OpusDecoder:
    """Opus packets back to float32 mono at 48 kHz (for tests and loopback checks)."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"

    def decode(self, packet: bytes) -> np.ndarray:
        """The samples in one packet (960 for a 20 ms packet)."""
        frames = self._codec.decode(av.Packet(packet))
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([_to_float_mono(frame) for frame in frames])


def _to_float_mono(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray()
    if samples.dtype == np.int16:
        return samples.reshape(-1).astype(np.float32) / 32768.0
    return samples.reshape(-1).astype(np.float32, copy=False)
