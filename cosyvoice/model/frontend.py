"""Prompt audio to model inputs: ONNX speech tokenizer, CAM++ speaker embedding, text normalization.

The two ONNX models are run with onnxruntime, inputs and outputs taken by
position (the official files name them ``feats``/``feats_length`` and so on,
but nothing here depends on the names).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from cosyvoice.model.features import kaldi_fbank, whisper_log_mel

log = logging.getLogger(__name__)

MAX_PROMPT_SECONDS = 30.0  # the speech tokenizer's limit


def _session(path: Path, threads: int, providers: list[str]) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [p for p in providers if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:
        raise ValueError(f"{path}: cannot be loaded by onnxruntime: {error}") from error


class SpeechTokenizer:
    """16 kHz audio -> discrete speech tokens (``speech_tokenizer_v*.onnx``)."""

    def __init__(self, path: Path, *, threads: int = 1, providers: list[str] | None = None) -> None:
        self.session = _session(path, threads, providers or ["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise ValueError(f"{path}: expected 2 inputs (feats, feats_length), found {len(inputs)}")
        self.inputs = [i.name for i in inputs]

    def __call__(self, wave16k: np.ndarray) -> Tensor:
        if len(wave16k) > MAX_PROMPT_SECONDS * 16000:
            raise ValueError(f"prompt audio longer than {MAX_PROMPT_SECONDS:.0f} s cannot be tokenized")
        feats = whisper_log_mel(torch.from_numpy(np.ascontiguousarray(wave16k, dtype=np.float32)))
        outputs = self.session.run(
            None,
            {
                self.inputs[0]: feats.unsqueeze(0).numpy(),
                self.inputs[1]: np.array([feats.size(1)], dtype=np.int32),
            },
        )
        return torch.from_numpy(np.asarray(outputs[0]).reshape(-1).astype(np.int64))


class SpeakerEncoder:
    """16 kHz audio -> a 192-d CAM++ x-vector (``campplus.onnx``)."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.session = _session(path, threads, ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, wave16k: np.ndarray) -> Tensor:
        feats = kaldi_fbank(torch.from_numpy(np.ascontiguousarray(wave16k, dtype=np.float32)))
        output = self.session.run(None, {self.input: feats.unsqueeze(0).numpy()})[0]
        return torch.from_numpy(np.asarray(output, dtype=np.float32).reshape(1, -1))


class TextNormalizer:
    """wetext's text normalization when enabled and installed; otherwise text passes unchanged.

    Text with ``<|...|>`` markup is never normalized (as upstream): it is
    already in the model's own notation.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.normalizer = None
        if not enabled:
            return
        try:
            from wetext import Normalizer
        except ImportError:
            log.info("wetext is not installed: text is passed to the model unnormalized")
            return
        self.normalizer = Normalizer(lang="auto", operator="tn", remove_erhua=False)

    @property
    def active(self) -> bool:
        return self.normalizer is not None

    def __call__(self, text: str) -> str:
        if self.normalizer is None or ("<|" in text and "|>" in text):
            return text
        return self.normalizer.normalize(text)
