"""One request's synthesis: text tokens -> speech tokens -> mel -> audio chunks.

A :class:`Synthesis` holds everything a request accumulates (its decoding
state, token list, hop schedule, vocoder caches, random generator), so the
model objects stay stateless and shareable. Its :meth:`Synthesis.chunks`
generator does one bounded piece of work per chunk; the engine runs it a
chunk at a time on the inference thread, which is what makes cancellation
take effect within one chunk.

Streaming schedule (v2/v3): the first chunk waits for ``hop + pad + 3``
tokens, where ``pad`` aligns [prompt | tokens] to the flow's 25-token
attention chunks and 3 tokens are lookahead; each later hop doubles up to
``max_hop``. The hop lives here, per request (upstream keeps it on the model,
where it leaks between requests).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from cosyvoice.engine import Audio
from cosyvoice.model.features import prompt_mel, resample
from cosyvoice.model.hift import HiFTGenerator, SourceDraws
from cosyvoice.model.loader import Components

V1_HOP, V1_OVERLAP, V1_MEL_CACHE = 100, 20, 20  # tokens, tokens, mel frames (v1 streaming)
SILENT_TOKENS_V3 = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
MAX_SILENT_RUN = 5


class Cancelled(Exception):
    """The request was cancelled while its chunk was being computed."""


@dataclass
class ModeInputs:
    """The per-mode inputs of one request, ready for the models (CPU or device tensors)."""

    prompt_text: Tensor  # text token ids before the text to speak (transcript or instruction)
    llm_speech: Tensor  # prompt speech tokens the LLM continues from
    llm_embedding: Tensor | None  # speaker x-vector for the v1 LLM
    flow_speech: Tensor  # prompt speech tokens for the flow
    flow_feat: Tensor  # prompt mel [1, frames, 80]
    flow_embedding: Tensor  # speaker x-vector for the flow [1, 192]


class HiftStream:
    """Chunked vocoding for the non-causal v1/v2 HiFT: carry the last mel frames and the excitation's
    tail into the next chunk, and cross-fade the seam with a Hamming window."""

    def __init__(self, hift: HiFTGenerator, generator: torch.Generator | None, mel_cache: int = 8) -> None:
        self.hift = hift
        self.generator = generator
        self.mel_cache = mel_cache
        self.overlap = mel_cache * hift.hop_samples
        self.window = torch.from_numpy(np.hamming(2 * self.overlap).astype(np.float32))
        self.mel: Tensor | None = None
        self.source: Tensor | None = None
        self.tail: Tensor | None = None

    def push(self, mel: Tensor, final: bool) -> Tensor:
        if self.mel is not None:
            mel = torch.cat([self.mel, mel], dim=2)
        wave, source = self.hift(mel, source_cache=self.source, generator=self.generator)
        wave = wave[0].cpu()
        if self.tail is not None:
            n = min(self.overlap, wave.numel())
            wave[:n] = wave[:n] * self.window[:n] + self.tail[-n:] * self.window[self.overlap : self.overlap + n]
        if final:
            return wave
        self.mel = mel[:, :, -self.mel_cache :]
        self.source = source[:, :, -self.overlap :]
        self.tail = wave[-self.overlap :]
        return wave[: -self.overlap]


class CausalHiftStream:
    """Chunked vocoding for the causal v3 HiFT with fixed draws: re-vocode the mel so far and emit what
    no longer depends on the lookahead (upstream's scheme; incremental caching is a later step)."""

    HOLD_FRAMES = 8  # conv_pre (4) + F0 (3) lookahead + the iSTFT overlap

    def __init__(self, hift: HiFTGenerator, draws: SourceDraws) -> None:
        self.hift = hift
        self.draws = draws
        self.mel: Tensor | None = None
        self.emitted = 0

    def push(self, mel: Tensor, final: bool) -> Tensor:
        self.mel = mel if self.mel is None else torch.cat([self.mel, mel], dim=2)
        wave, _ = self.hift(self.mel, self.draws)
        wave = wave[0].cpu()
        end = wave.numel() if final else max(0, (self.mel.size(2) - self.HOLD_FRAMES) * self.hift.hop_samples)
        out = wave[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out


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


class Synthesis:
    """Per-request state and the chunk generator for one clause (or one VC source)."""

    def __init__(
        self,
        components: Components,
        prompt: ModeInputs,
        *,
        stream: bool,
        speed: float,
        generator: torch.Generator | None,
        seed: int | None,
        cancelled: threading.Event,
        draws: SourceDraws | None = None,
        first_hop: int = 25,
        max_hop: int = 100,
    ) -> None:
        self.c = components
        self.prompt = prompt
        self.stream = stream and speed == 1.0
        self.speed = speed
        self.generator = generator
        self.seed = seed
        self.cancelled = cancelled
        self.draws = draws
        self.first_hop = first_hop
        self.max_hop = max_hop

    # -- tokens ---------------------------------------------------------------
    def speech_tokens(self, text: Tensor) -> Iterator[int]:
        llm = self.c.llm
        p = self.prompt
        lm_prompt = llm.prompt(text, p.prompt_text, p.llm_speech, p.llm_embedding)
        # the LLM samples from its own seeded stream, so vocoding between chunks cannot shift its draws
        state = llm.start(lm_prompt, text_len=text.numel(), seed=self.seed)
        silent_run = 0
        while True:
            if self.cancelled.is_set():
                raise Cancelled
            token = llm.step(state)
            if token is None:
                return
            if self.c.generation == 3:  # v3: long runs of silence tokens are dropped (the LM still saw them)
                silent_run = silent_run + 1 if token in SILENT_TOKENS_V3 else 0
                if silent_run > MAX_SILENT_RUN:
                    continue
            yield token

    # -- audio ----------------------------------------------------------------
    def noise(self, frames: int) -> Tensor:
        """v1's initial flow noise for one call (v2/v3 use the fixed table); a hook for tests."""
        return torch.randn(1, 80, frames, generator=self.generator)

    def _vocoder(self):
        if self.c.generation == 3:
            return CausalHiftStream(self.c.hift, self.draws)
        return HiftStream(self.c.hift, self.generator)

    def _flow(self, tokens: list[int], *, streaming: bool, finalize: bool) -> Tensor:
        p = self.prompt
        device = p.flow_feat.device
        token_tensor = torch.tensor(tokens, dtype=torch.long, device=device)
        if self.c.generation == 1:
            frames = p.flow_feat.size(1) + self.c.flow.target_frames(len(tokens))
            noise = self.noise(frames).to(device)
            return self.c.flow(token_tensor, p.flow_speech, p.flow_feat, p.flow_embedding, noise)
        return self.c.flow(
            token_tensor, p.flow_speech, p.flow_feat, p.flow_embedding, self.c.noise,
            streaming=streaming, finalize=finalize,
        )

    def _whole(self, tokens: list[int]) -> np.ndarray:
        mel = self._flow(tokens, streaming=False, finalize=True)
        if self.speed != 1.0:
            mel = F.interpolate(mel, size=max(1, int(mel.size(2) / self.speed)), mode="linear")
        return self._vocoder().push(mel, final=True).numpy()

    def chunks(self, token_source: Iterator[int]) -> Iterator[np.ndarray]:
        """Audio chunks (float32) for the tokens ``token_source`` yields; one bounded step per chunk."""
        if not self.stream:
            tokens = list(token_source)
            if tokens:
                yield self._whole(tokens)
            return
        if self.c.generation == 1:
            yield from self._windows(token_source)
            return
        lookahead = self.c.flow.lookahead
        ratio = self.c.flow.token_mel_ratio
        prompt_tokens = self.prompt.flow_speech.numel()
        pad = math.ceil(prompt_tokens / self.first_hop) * self.first_hop - prompt_tokens
        hop, this_hop = self.first_hop, self.first_hop + pad
        tokens: list[int] = []
        offset = 0
        vocoder = self._vocoder()
        for token in token_source:
            tokens.append(token)
            if len(tokens) - offset >= this_hop + lookahead:
                mel = self._flow(tokens[: offset + this_hop + lookahead], streaming=True, finalize=False)
                yield vocoder.push(mel[:, :, offset * ratio :], final=False).numpy()
                offset += this_hop
                hop = this_hop = min(self.max_hop, hop * 2)
        if self.cancelled.is_set():
            raise Cancelled
        if tokens:
            mel = self._flow(tokens, streaming=True, finalize=True)
            yield vocoder.push(mel[:, :, offset * ratio :], final=True).numpy()

    def _windows(self, token_source: Iterator[int]) -> Iterator[np.ndarray]:
        """v1 streaming: windows of hop + 20 tokens that overlap by 20; the overlap's 34 mel frames share
        noise and condition with the previous window and are cross-faded; then chunked vocoding."""
        flow, p = self.c.flow, self.prompt
        hop, overlap = V1_HOP, V1_OVERLAP
        overlap_frames = flow.target_frames(overlap)
        fade = torch.from_numpy(np.hamming(2 * overlap_frames).astype(np.float32)).to(p.flow_feat.device)
        vocoder = HiftStream(self.c.hift, self.generator, mel_cache=V1_MEL_CACHE)
        carry = None
        held: Tensor | None = None

        def render(window: list[int], final: bool) -> np.ndarray:
            nonlocal carry, held
            frames = p.flow_feat.size(1) + flow.target_frames(len(window))
            noise = self.noise(frames).to(p.flow_feat.device)
            tokens = torch.tensor(window, dtype=torch.long, device=p.flow_feat.device)
            mel, carry = flow.window(tokens, p.flow_speech, p.flow_feat, p.flow_embedding, noise, carry, overlap_frames)
            if held is not None:
                n = min(overlap_frames, mel.size(2))
                mel[:, :, :n] = mel[:, :, :n] * fade[:n] + held[:, :, :n] * fade[overlap_frames : overlap_frames + n]
            if final:
                return vocoder.push(mel, final=True).numpy()
            held = mel[:, :, -overlap_frames:]
            return vocoder.push(mel[:, :, :-overlap_frames], final=False).numpy()

        tokens: list[int] = []
        offset = 0
        for token in token_source:
            tokens.append(token)
            if len(tokens) - offset >= hop + overlap:
                yield render(tokens[offset : offset + hop + overlap], final=False)
                offset += hop
        if self.cancelled.is_set():
            raise Cancelled
        if len(tokens) > offset:
            yield render(tokens[offset:], final=True)
