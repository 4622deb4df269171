"""A request's model inputs: the per-mode prompt tensors, the prompt frontend and v3's fixed draws.

What happens to them next (speech tokens, incremental flow, chunked
vocoding, all sessions batched) is the runtime's job: :mod:`cosyvoice.runtime`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cosyvoice.engine import Audio
from cosyvoice.model.features import prompt_mel, resample
from cosyvoice.model.hift import HiFTGenerator, SourceDraws
from cosyvoice.model.loader import Components


@dataclass
class ModeInputs:
    """The per-mode inputs of one request, ready for the models (CPU or device tensors)."""

    prompt_text: Tensor  # text token ids before the text to speak (transcript or instruction)
    llm_speech: Tensor  # prompt speech tokens the LLM continues from
    llm_embedding: Tensor | None  # speaker x-vector for the v1 LLM
    flow_speech: Tensor  # prompt speech tokens for the flow
    flow_feat: Tensor  # prompt mel [1, frames, 80]
    flow_embedding: Tensor  # speaker x-vector for the flow [1, 192]


def prompt_features(c: Components, audio: Audio) -> dict[str, np.ndarray]:
    """Speech tokens, prompt mel and x-vector of a prompt recording, as upstream's frontend makes them."""
    wave16k = resample(audio.samples, audio.sample_rate, 16000)
    tokens = c.speech_tokenizer(wave16k)
    embedding = c.speaker_encoder(wave16k)
    wave = resample(audio.samples, audio.sample_rate, c.mel.sampling_rate)  # from the original, as upstream now does
    feat = prompt_mel(torch.from_numpy(wave), c.mel)
    if c.generation > 1:  # exactly token_mel_ratio frames per token
        ratio = c.flow.token_mel_ratio
        n = min(feat.size(0) // ratio, tokens.numel())
        feat, tokens = feat[: n * ratio], tokens[:n]
    return {"speech_token": tokens.numpy(), "speech_feat": feat.numpy(), "embedding": embedding.numpy()}


def fixed_draws(hift: HiFTGenerator, seconds: float = 30.0) -> SourceDraws:
    """v3's deterministic source randomness: one table per model, sliced per call."""
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * hift.sampling_rate)
    return SourceDraws(
        torch.rand(1, hift.harmonics, generator=generator) * 2 * math.pi,
        torch.rand(1, samples, hift.harmonics, generator=generator),
    )
