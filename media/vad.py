"""Voice activity detection with Silero VAD's ONNX model, without torch.

The model ships inside the PyPI package ``silero-vad`` (MIT), installed with
``--no-deps`` so torch is not pulled in; we load its ONNX file with
onnxruntime and never import the package. It works on 8 kHz (256-sample
windows, 32 ms) and 16 kHz (512-sample windows) audio; other rates are
resampled to 16 kHz. One ONNX session serves every call: each detector
keeps its own recurrent state and passes it in.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import onnxruntime

from media.resample import StreamResampler

_WINDOW = {8000: 256, 16000: 512}
_CONTEXT = {8000: 32, 16000: 64}
# Windows quieter than this (RMS, -60 dBFS) are not speech and skip the model: a caller who listens
# in a quiet room (or a line that sends digital silence) costs next to nothing.
QUIET_RMS = 10 ** (-60 / 20)


def rms(samples: np.ndarray) -> float:
    """Root mean square of mono float32 audio; 0 for none (a dot product: no temporaries, little overhead)."""
    return math.sqrt(float(np.dot(samples, samples)) / len(samples)) if len(samples) else 0.0


class VadUnavailable(RuntimeError):
    """The silero-vad package (its ONNX model) is not installed."""


@functools.cache
def _session() -> onnxruntime.InferenceSession:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadUnavailable("voice activity detection needs the 'silero-vad' package (pip install --no-deps silero-vad)")
    model = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def available() -> bool:
    try:
        _session()
    except VadUnavailable:
        return False
    return True


class SpeechDetector:
    """Speech probability per window for one stream of mono float32 audio."""

    def __init__(self, sample_rate: int) -> None:
        self.model_rate = sample_rate if sample_rate in _WINDOW else 16000
        self._resampler = StreamResampler(sample_rate, self.model_rate)
        self.window = _WINDOW[self.model_rate]
        self.window_seconds = self.window / self.model_rate
        self._session = _session()
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, _CONTEXT[self.model_rate]), np.float32)
        self._pending = np.zeros(0, np.float32)
        self._rate = np.array(self.model_rate, np.int64)

    def quiet(self, samples: np.ndarray) -> bool:
        """No window these samples complete can reach the model: ``process`` is then cheap enough for the event loop.

        RMS never exceeds the peak, and half the level leaves room for a resampler's overshoot.
        """
        return all(len(part) == 0 or np.abs(part).max() < QUIET_RMS / 2 for part in (self._pending, samples))

    def process(self, samples: np.ndarray) -> list[tuple[float, float]]:
        """``(speech probability, RMS)`` for each whole window the new samples complete."""
        audio = np.concatenate([self._pending, self._resampler.process(samples)])
        results = []
        whole = len(audio) // self.window * self.window
        for start in range(0, whole, self.window):
            window = audio[start : start + self.window].reshape(1, -1)
            level = rms(window[0])
            probability = 0.0
            if level >= QUIET_RMS:
                output, self._state = self._session.run(
                    None, {"input": np.concatenate([self._context, window], axis=1), "state": self._state, "sr": self._rate}
                )
                probability = float(output[0][0])
            self._context = window[:, -self._context.shape[1] :]
            results.append((probability, level))
        self._pending = audio[whole:]
        return results
