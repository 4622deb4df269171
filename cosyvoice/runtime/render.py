"""Speech tokens to audio chunks, for several sessions per call: the render stage.

A renderer opens per-session state, says when a session's next chunk is ready
(and how many mel frames it costs, for the scheduler), and renders a batch.

* :class:`FlowRenderer` (v2/v3) streams on the hop schedule with the
  incremental flow (every session's new frames in one packed solver call) and
  the chunked vocoder (v2: batched by shape; v3: incremental, packed). The
  last segment of a streamed utterance is upstream's final call: one pass
  over [prompt | every token] with full attention, of which it keeps the
  frames after the last audio boundary.
* :class:`WindowRenderer` (v1) streams upstream's overlapping windows through
  the non-causal flow one session at a time, then vocodes the batch.

A session that does not stream (or changes speed) renders in one call once
its last token is known: full attention, then the speed change, then the
vocoder.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from cosyvoice.model.flow import FlowCarry, FlowSession
from cosyvoice.model.hift import SourceDraws
from cosyvoice.model.loader import Components
from cosyvoice.model.vocoder import CausalVocoder, CausalVocoderSession, HiftStream, vocode
from cosyvoice.runtime.prompt_cache import PromptCache
from cosyvoice.runtime.schedule import HopSchedule
from cosyvoice.runtime.session import Session

V1_HOP, V1_OVERLAP, V1_MEL_CACHE = 100, 20, 20  # tokens, tokens, mel frames (v1 streaming)


def flow_precision(dtype: torch.dtype, device: torch.device) -> AbstractContextManager:
    """Where the flow computes: float32, or bfloat16 under autocast (matmuls, convolutions and
    attention in bfloat16, about twice as fast on a CPU with AVX512-BF16 or AMX; weights, norms and
    the vocoder stay float32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def _whole(session: Session) -> bool:
    return not session.stream or session.speed != 1.0


def _speed(mel: Tensor, speed: float) -> Tensor:
    if speed == 1.0:
        return mel
    return F.interpolate(mel, size=max(1, int(mel.size(2) / speed)), mode="linear")


@dataclass
class _Flowing:
    flow: FlowSession
    vocoder: HiftStream | CausalVocoderSession
    next_end: int  # where in [prompt | tokens] the next audio chunk ends
    hop: int  # that chunk's hop
    first: bool = True  # the next audio chunk is the first
    finished: bool = False
    cache_key: str | None = None  # store the state after the prompt's own chunks under this key
    mel: list[Tensor] = field(default_factory=list)  # solved frames of the audio chunk under way


class FlowRenderer:
    """v2/v3: hop-scheduled chunks through the incremental flow and the chunked vocoder.

    The flow solves one 25-token attention chunk per call, as soon as its
    lookahead is known; audio leaves at the hop boundaries, so a hop's frames
    are mostly solved while the LLM is still producing its last tokens. A
    streamed session's prompt goes through the flow before any speech token is
    needed, up to its last whole chunk whose lookahead is still in the prompt
    (or comes from the prompt cache); the rest of its whole chunks follow once
    the first 3 speech tokens are known. Once the last token is known, what
    is left after the last whole hop is rendered as upstream renders it: one
    unmasked pass over the whole utterance (its cost grows with the
    utterance, once per utterance; chunks of that segment solved earlier
    with chunk masks are dropped).
    """

    def __init__(
        self, components: Components, schedule: HopSchedule, draws: SourceDraws | None = None,
        prompt_cache: PromptCache | None = None, precision: torch.dtype = torch.float32,
    ) -> None:
        self.c = components
        self.schedule = schedule
        self.precision = precision
        self.causal = CausalVocoder(components.hift, draws) if components.generation == 3 else None
        self.prompt_cache = prompt_cache

    def open(self, session: Session) -> None:
        p = session.prompt
        prompt, hop = p.flow_speech.numel(), self.schedule.first(p.flow_speech.numel())
        flow, key = None, None
        if self.prompt_cache is not None and not _whole(session) and self._prompt_own(prompt):
            key = self.prompt_cache.key(p)
            flow = self.prompt_cache.get(key)
        if flow is None:
            flow = self.c.flow.begin(p.flow_feat, p.flow_embedding, streaming=not _whole(session))
        vocoder = self.causal.begin() if self.causal else HiftStream(self.c.hift, session.generator)
        session.render = _Flowing(flow, vocoder, prompt + hop, hop, cache_key=key if flow.tokens == 0 else None)

    def _prompt_own(self, prompt: int) -> int:
        """The prompt's whole chunks whose lookahead is still prompt: what the prompt alone decides."""
        chunk = self.schedule.chunk
        return max(0, prompt - self.c.flow.lookahead) // chunk * chunk

    def finished(self, session: Session) -> bool:
        return session.render.finished

    def next_chunk(self, session: Session) -> tuple[int, bool] | None:
        """(end, final): the next chunk encodes positions ``flow.tokens .. end`` of [prompt | tokens];
        None while it is not ready."""
        state: _Flowing = session.render
        if state.finished:
            return None
        prompt = session.prompt.flow_speech.numel()
        known = prompt + len(session.tokens)
        if _whole(session):
            return (known, True) if session.llm_done else None
        lookahead = self.c.flow.lookahead
        if session.llm_done and known < state.next_end + lookahead:  # no whole hop left: the last segment
            return known, True
        own, prompt_chunks = self._prompt_own(prompt), prompt - prompt % self.schedule.chunk
        if state.flow.tokens < own:
            return own, False
        if state.flow.tokens < prompt_chunks and known >= prompt_chunks + lookahead:
            return prompt_chunks, False
        block = min(state.next_end, (state.flow.tokens // self.schedule.chunk + 1) * self.schedule.chunk)
        if state.flow.tokens >= prompt_chunks and known >= block + lookahead:
            return block, False
        return None

    def frames(self, session: Session) -> int:
        """Mel frames the next chunk solves (the last one solves them all, prompt included)."""
        end, final = self.next_chunk(session)
        return (end - (0 if final else session.render.flow.tokens)) * self.c.flow.token_mel_ratio

    def render(self, sessions: list[Session]) -> list[np.ndarray]:
        flow = self.c.flow
        finals = []
        with flow_precision(self.precision, self.c.noise.device):
            for session in sessions:
                state: _Flowing = session.render
                end, final = self.next_chunk(session)
                if final and state.flow.streaming:
                    state.flow, state.mel = state.flow.unmasked(), []
                lookahead = 0 if final else flow.lookahead
                positions = _positions(session, state.flow.tokens, end + lookahead)
                flow.encode(state.flow, positions[: len(positions) - lookahead], None if final else positions[-lookahead:])
                state.finished = final
                finals.append(final)
            mels = flow.render([s.render.flow for s in sessions], self.c.noise)
        audible = []
        for i, (session, mel) in enumerate(zip(sessions, mels)):
            state = session.render
            if state.cache_key is not None and state.flow.tokens == self._prompt_own(session.prompt.flow_speech.numel()):
                self.prompt_cache.put(state.cache_key, state.flow)
                state.cache_key = None
            if finals[i]:  # the pass covered every frame: keep those after the last audio boundary
                mel = mel[:, :, (state.next_end - state.hop - session.prompt.flow_speech.numel()) * flow.token_mel_ratio :]
            state.mel.append(mel.float())
            if state.flow.tokens == state.next_end and not finals[i]:  # a hop is complete: its audio leaves
                # Hops grow while the LLM runs ahead of playback; a text-fed session's tokens come only as
                # fast as its text, so each of its chunks leaves as soon as it is solved.
                state.hop = self.schedule.chunk if session.feed is not None else self.schedule.next(state.hop, state.first)
                state.first, state.next_end = False, state.next_end + state.hop
                audible.append(i)
            elif finals[i]:
                audible.append(i)
        waves = [np.zeros(0, dtype=np.float32)] * len(sessions)
        if audible:
            vocoders = [sessions[i].render.vocoder for i in audible]
            mels = [_speed(torch.cat(sessions[i].render.mel, dim=2), sessions[i].speed) for i in audible]
            for i in audible:
                sessions[i].render.mel = []
            done = [finals[i] for i in audible]
            out = self.causal.push(vocoders, mels, done) if self.causal else vocode(vocoders, mels, done)
            for i, wave in zip(audible, out):
                waves[i] = wave.numpy()
        return waves


def _positions(session: Session, start: int, end: int) -> Tensor:
    """Positions ``start .. end`` of [prompt | tokens]."""
    prompt = session.prompt.flow_speech
    count = prompt.numel()
    parts = [prompt[start:end]] if start < count else []
    if end > count:
        parts.append(torch.tensor(session.tokens[max(start, count) - count : end - count], device=prompt.device))
    return torch.cat([part.long() for part in parts])


@dataclass
class _Windowed:
    vocoder: HiftStream
    offset: int = 0
    carry: FlowCarry | None = None
    held: Tensor | None = None
    finished: bool = False


class WindowRenderer:
    """v1: windows of 100 + 20 tokens that overlap by 20; the overlap's 34 mel frames share noise and
    condition with the previous window and are cross-faded; then chunked vocoding."""

    def __init__(self, components: Components, precision: torch.dtype = torch.float32) -> None:
        self.c = components
        self.precision = precision
        self.overlap_frames = components.flow.target_frames(V1_OVERLAP)
        self.fade = torch.from_numpy(np.hamming(2 * self.overlap_frames).astype(np.float32))

    def open(self, session: Session) -> None:
        session.render = _Windowed(HiftStream(self.c.hift, session.generator, mel_cache=V1_MEL_CACHE))

    def finished(self, session: Session) -> bool:
        return session.render.finished

    def noise(self, session: Session, frames: int) -> Tensor:
        """The flow's initial noise for one call (a hook for tests)."""
        return torch.randn(1, 80, frames, generator=session.generator)

    def next_chunk(self, session: Session) -> tuple[int, bool] | None:
        state: _Windowed = session.render
        left = len(session.tokens) - state.offset
        if state.finished or (_whole(session) and not session.llm_done):
            return None
        if not _whole(session) and left >= V1_HOP + V1_OVERLAP:
            return V1_HOP + V1_OVERLAP, False
        return (left, True) if session.llm_done else None

    def frames(self, session: Session) -> int:
        count, _ = self.next_chunk(session)
        return self.c.flow.target_frames(count) + session.prompt.flow_feat.size(1)

    def render(self, sessions: list[Session]) -> list[np.ndarray]:
        mels, finals = [], []
        for session in sessions:
            count, final = self.next_chunk(session)
            mels.append(self._mel(session, count, final))
            finals.append(final)
        waves = vocode([s.render.vocoder for s in sessions], mels, finals)
        return [wave.numpy() for wave in waves]

    def _mel(self, session: Session, count: int, final: bool) -> Tensor:
        state: _Windowed = session.render
        p, flow = session.prompt, self.c.flow
        device = p.flow_feat.device
        tokens = torch.tensor(session.tokens[state.offset : state.offset + count], dtype=torch.long, device=device)
        noise = self.noise(session, p.flow_feat.size(1) + flow.target_frames(count)).to(device)
        state.finished = final
        with flow_precision(self.precision, device):
            if _whole(session):
                return _speed(flow(tokens, p.flow_speech, p.flow_feat, p.flow_embedding, noise).float(), session.speed)
            mel, state.carry = flow.window(
                tokens, p.flow_speech, p.flow_feat, p.flow_embedding, noise, state.carry, self.overlap_frames
            )
        mel = mel.float()
        if state.held is not None:
            n = min(self.overlap_frames, mel.size(2))
            fade = self.fade.to(device)
            mel[:, :, :n] = mel[:, :, :n] * fade[:n] + state.held[:, :, :n] * fade[self.overlap_frames : self.overlap_frames + n]
        state.offset += V1_HOP
        if final:
            return mel
        state.held = mel[:, :, -self.overlap_frames :]
        return mel[:, :, : -self.overlap_frames]


Renderer = FlowRenderer | WindowRenderer
