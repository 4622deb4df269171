"""Speech tokens to mel: token encoders and conditional flow matching (CFM).

All three generations integrate the same ODE: 10 Euler steps on a cosine
time schedule with classifier-free guidance 0.7, the unconditional row
zeroing mu, speaker and prompt condition. The initial noise is an argument:
v2/v3 use one fixed table (``fixed_noise``), so every position always starts
from the same noise and a recomputed chunk reproduces earlier frames; v1
draws fresh noise per call (pass a generator to make it reproducible).

v2/v3 also render incrementally (:meth:`_CausalFlow.begin`, ``encode``,
``render``): each chunk's new tokens go through the encoder and the solver
once, with keys/values and convolution inputs of earlier positions carried in
a :class:`FlowSession`, and the noise taken at the frames' absolute positions.
``render`` runs several sessions' chunks in one packed call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.conformer import Encoder, EncoderCache, PreLookaheadLayer, UpsampleEncoder
from cosyvoice.model.incremental import Packed, SessionState

NOISE_FRAMES = 15000  # 300 s of mel at 50 frames/s: the cap on prompt + output per flow call


def fixed_noise(frames: int = NOISE_FRAMES, channels: int = 80) -> Tensor:
    """The v2/v3 noise table: torch's CPU normal stream for seed 0, as upstream draws it."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(0)
    return torch.randn(1, channels, frames, generator=generator)


class ConditionalCFM(nn.Module):
    """``decoder``: the Euler solver with CFG around an estimator (``decoder.estimator``)."""

    def __init__(self, estimator: nn.Module, *, cfg_rate: float = 0.7, steps: int = 10) -> None:
        super().__init__()
        self.estimator = estimator
        self.cfg_rate = cfg_rate
        self.steps = steps

    def forward(
        self, noise: Tensor, mu: Tensor, mask: Tensor, spks: Tensor, cond: Tensor, *, streaming: bool = False
    ) -> Tensor:
        t_span = 1 - torch.cos(torch.linspace(0, 1, self.steps + 1, device=mu.device, dtype=mu.dtype) * 0.5 * math.pi)
        x = noise.to(mu.dtype)
        t, dt = t_span[0], t_span[1] - t_span[0]
        mask2 = torch.cat([mask, mask])
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spks2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        for step in range(1, self.steps + 1):
            velocity = self.estimator(torch.cat([x, x]), mask2, mu2, t.expand(2), spks2, cond2, streaming)
            guided, free = velocity.chunk(2)
            x = x + dt * ((1.0 + self.cfg_rate) * guided - self.cfg_rate * free)
            t = t + dt
            if step < self.steps:
                dt = t_span[step + 1] - t
        return x.float()

    def stream(self, noise: Tensor, mu: Tensor, spks: Tensor, cond: Tensor, batch: Packed) -> Tensor:
        """:meth:`forward` for the new frames of packed sessions (``[1, 80, total]`` each, ``spks`` per
        frame); earlier frames enter through ``batch``'s carried state, one scope per solver step."""
        t_span = 1 - torch.cos(torch.linspace(0, 1, self.steps + 1, device=mu.device, dtype=mu.dtype) * 0.5 * math.pi)
        x = noise.to(mu.dtype)
        t, dt = t_span[0], t_span[1] - t_span[0]
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spks2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        for step in range(1, self.steps + 1):
            velocity = self.estimator.stream(torch.cat([x, x]), mu2, t.expand(2), spks2, cond2, batch.scoped(step))
            guided, free = velocity.chunk(2)
            x = x + dt * ((1.0 + self.cfg_rate) * guided - self.cfg_rate * free)
            t = t + dt
            if step < self.steps:
                dt = t_span[step + 1] - t
        return x.float()


class InterpolateRegulator(nn.Module):
    """v1: stretch token features to mel length, then a small conv stack (``length_regulator.model``)."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, prompt: Tensor, target: Tensor, prompt_frames: int, target_frames: int, token_rate: int) -> Tensor:
        """``prompt``/``target`` ``[1, T, C]`` -> ``[1, prompt_frames + target_frames, C]``.

        A long target has its first and last 20 tokens stretched to exactly the
        frames they get in a 20-token streaming overlap, so overlapping chunks agree.
        """
        edge = int(20 / token_rate * 22050 / 256)
        t = target.transpose(1, 2)
        if target.size(1) > 40:
            t = torch.cat(
                [
                    F.interpolate(t[:, :, :20], size=edge, mode="linear"),
                    F.interpolate(t[:, :, 20:-20], size=target_frames - 2 * edge, mode="linear"),
                    F.interpolate(t[:, :, -20:], size=edge, mode="linear"),
                ],
                dim=2,
            )
        else:
            t = F.interpolate(t, size=target_frames, mode="linear")
        if prompt.size(1) > 0:
            t = torch.cat([F.interpolate(prompt.transpose(1, 2), size=prompt_frames, mode="linear"), t], dim=2)
        return self.model(t).transpose(1, 2)


class _Flow(nn.Module):
    input_embedding: nn.Embedding
    spk_embed_affine_layer: nn.Linear
    decoder: ConditionalCFM

    def speaker(self, embedding: Tensor) -> Tensor:
        return self.spk_embed_affine_layer(F.normalize(embedding.float(), dim=1))

    def embed(self, tokens: Tensor) -> Tensor:
        return self.input_embedding(tokens.clamp(min=0).view(1, -1))

    def solve(
        self, mu: Tensor, prompt_feat: Tensor, spks: Tensor, noise: Tensor, *, streaming: bool
    ) -> Tensor:
        """Run the CFM over [prompt | target] and return the target's mel ``[1, 80, frames]``."""
        frames = mu.size(1)
        prompt_frames = prompt_feat.size(1)
        if noise.size(-1) < frames:
            raise ValueError(f"the noise covers {noise.size(-1)} frames; {frames} are needed")
        cond = torch.zeros(1, frames, mu.size(2), device=mu.device, dtype=mu.dtype)
        cond[:, :prompt_frames] = prompt_feat
        mask = torch.ones(1, 1, frames, device=mu.device, dtype=mu.dtype)
        mel = self.decoder(
            noise[:, :, :frames].to(mu.device), mu.transpose(1, 2), mask, spks, cond.transpose(1, 2), streaming=streaming
        )
        return mel[:, :, prompt_frames:]


class MaskedDiffWithXvec(_Flow):
    """v1: conformer encoder, interpolating length regulator, non-causal U-Net CFM."""

    def __init__(
        self, *, input_size: int, output_size: int, spk_embed_dim: int, vocab_size: int, input_frame_rate: int,
        encoder: Encoder, length_regulator: InterpolateRegulator, decoder: ConditionalCFM,
    ) -> None:
        super().__init__()
        self.input_frame_rate = input_frame_rate
        self.input_embedding = nn.Embedding(vocab_size, input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.after_norm.normalized_shape[0], output_size)
        self.length_regulator = length_regulator
        self.decoder = decoder

    def target_frames(self, tokens: int) -> int:
        return int(tokens / self.input_frame_rate * 22050 / 256)

    def mu(self, tokens: Tensor, prompt_tokens: Tensor, prompt_frames: int) -> Tensor:
        """The CFM condition ``[1, prompt_frames + target_frames, 80]``."""
        all_tokens = torch.cat([prompt_tokens, tokens])
        h = self.encoder(self.embed(all_tokens), torch.tensor([all_tokens.numel()], device=tokens.device))
        h = self.encoder_proj(h)
        split = prompt_tokens.numel()
        return self.length_regulator(
            h[:, :split], h[:, split:], prompt_frames, self.target_frames(tokens.numel()), self.input_frame_rate
        )

    @torch.inference_mode()
    def forward(
        self, tokens: Tensor, prompt_tokens: Tensor, prompt_feat: Tensor, embedding: Tensor, noise: Tensor
    ) -> Tensor:
        """Mel ``[1, 80, frames]`` for ``tokens``; ``noise`` covers at least prompt + target frames."""
        mu = self.mu(tokens, prompt_tokens, prompt_feat.size(1))
        return self.solve(mu, prompt_feat, self.speaker(embedding), noise, streaming=False)

    @torch.inference_mode()
    def window(
        self, tokens: Tensor, prompt_tokens: Tensor, prompt_feat: Tensor, embedding: Tensor, noise: Tensor,
        carry: FlowCarry | None, overlap_frames: int,
    ) -> tuple[Tensor, FlowCarry]:
        """One streaming window of tokens. ``carry`` (from the previous window) fixes the noise and the
        condition of the prompt and of the overlap at this window's start, so overlapping frames agree;
        the returned carry does the same for the next window."""
        mu = self.mu(tokens, prompt_tokens, prompt_feat.size(1))
        noise = noise[:, :, : mu.size(1)].clone()
        if carry is not None:
            fixed = carry.noise.size(2)
            noise[:, :, :fixed] = carry.noise
            mu[:, :fixed] = carry.mu
        mel = self.solve(mu, prompt_feat, self.speaker(embedding), noise, streaming=False)
        keep = [slice(0, prompt_feat.size(1)), slice(mu.size(1) - overlap_frames, mu.size(1))]
        carry = FlowCarry(
            noise=torch.cat([noise[:, :, k] for k in keep], dim=2), mu=torch.cat([mu[:, k] for k in keep], dim=1)
        )
        return mel, carry


@dataclass
class FlowCarry:
    """What a v1 streaming window hands to the next: noise ``[1, 80, L]`` and condition ``[1, L, 80]``
    for [prompt | overlap] frames."""

    noise: Tensor
    mu: Tensor


@dataclass
class FlowSession:
    """One session's incremental flow state: its prompt mel, what it has rendered, and the carried caches."""

    prompt_feat: Tensor  # [1, 2P, 80]
    speaker: Tensor  # [1, 80], after the affine layer
    streaming: bool  # chunk masks (else one call renders everything, with full attention)
    tokens: int = 0  # positions of [prompt | tokens] encoded so far
    frames: int = 0  # mel frames rendered so far, prompt included
    encoder: EncoderCache = field(default_factory=EncoderCache)  # v2
    lookahead_tail: Tensor | None = None  # v3
    estimator: SessionState = field(default_factory=SessionState)
    pending: Tensor | None = None  # the condition (mu) of encoded frames not yet rendered

    @property
    def nbytes(self) -> int:
        kv = sum(k.numel() * k.element_size() * 2 for k, _ in filter(None, self.encoder.kv))
        return kv + self.estimator.nbytes

    def snapshot(self) -> FlowSession:
        """A compact copy of a streamed session with nothing pending, for :meth:`fork` (a prompt cache)."""
        if self.pending is not None or not self.streaming:
            raise ValueError("only a streamed session with nothing pending can be copied")
        return replace(self, encoder=replace(self.encoder, kv=list(self.encoder.kv)), estimator=self.estimator.snapshot())

    def fork(self) -> FlowSession:
        """A new session that continues from this one, sharing its tensors (nothing is modified in place)."""
        return replace(self, encoder=replace(self.encoder, kv=list(self.encoder.kv)), estimator=self.estimator.fork())

    def unmasked(self) -> FlowSession:
        """A new session for the same prompt and speaker, from the first position, without chunk masks:
        upstream renders a streamed utterance's last segment by recomputing [prompt | every token] with
        full attention, so nothing carried by a streamed session applies to it."""
        return FlowSession(self.prompt_feat, self.speaker, streaming=False)


class _CausalFlow(_Flow):
    """v2/v3: two mel frames per token, a 3-token lookahead, and the fixed noise table."""

    token_mel_ratio: int

    def mu(self, tokens: Tensor, *, streaming: bool, finalize: bool) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, session: FlowSession, x: Tensor, context: Tensor | None) -> Tensor:  # pragma: no cover
        """The condition ``[1, frames, 80]`` of new embedded positions ``x`` (``context``: lookahead)."""
        raise NotImplementedError

    @property
    def chunk_tokens(self) -> int:  # pragma: no cover - abstract
        """The attention chunk in tokens: streamed chunks must end on its multiples."""
        raise NotImplementedError

    @torch.inference_mode()
    def begin(self, prompt_feat: Tensor, embedding: Tensor, *, streaming: bool) -> FlowSession:
        """A new session for [prompt | tokens]; ``prompt_feat`` is the prompt's mel (2 frames per token)."""
        return FlowSession(prompt_feat, self.speaker(embedding), streaming)

    @torch.inference_mode()
    def encode(self, session: FlowSession, tokens: Tensor, context: Tensor | None) -> None:
        """Encode the next positions of [prompt | tokens] (``context``: the lookahead tokens after them;
        None when they are the last); their frames wait in ``session.pending`` for :meth:`render`."""
        end = session.tokens + tokens.numel()
        if context is not None and not session.streaming:
            raise ValueError("without chunk masks the flow renders all tokens in one call")
        if context is not None and end % self.chunk_tokens:
            raise ValueError(f"a streamed chunk must end on a multiple of {self.chunk_tokens} tokens, not {end}")
        x = self.embed(tokens)
        ctx = self.embed(context) if context is not None and context.numel() > 0 else None
        mu = self._encode(session, x, ctx)
        session.pending = mu if session.pending is None else torch.cat([session.pending, mu], dim=1)
        session.tokens = end

    @torch.inference_mode()
    def render(self, sessions: list[FlowSession], noise: Tensor) -> list[Tensor]:
        """Solve the pending frames of several sessions in one packed call; each session's mel
        ``[1, 80, frames]`` past its prompt (empty if only prompt frames were pending)."""
        mus = [s.pending for s in sessions]
        lengths = [m.size(1) for m in mus]
        starts = [s.frames for s in sessions]
        for start, length in zip(starts, lengths):
            if start + length > noise.size(-1):
                raise ValueError(f"the noise covers {noise.size(-1)} frames; {start + length} are needed")
        mu = torch.cat(mus, dim=1).transpose(1, 2)
        x0 = torch.cat([noise[:, :, a : a + n] for a, n in zip(starts, lengths)], dim=2).to(mu.device)
        cond = torch.cat([_condition(s, a, n, mu) for s, a, n in zip(sessions, starts, lengths)], dim=2)
        batch = Packed([s.estimator for s in sessions], lengths, starts, [s.streaming for s in sessions])
        spks = batch.per_position([s.speaker for s in sessions])
        mels = batch.split(self.decoder.stream(x0, mu, spks, cond, batch))
        out = []
        for session, mel, start, length in zip(sessions, mels, starts, lengths):
            session.frames, session.pending = start + length, None
            out.append(mel[:, :, min(length, max(0, session.prompt_feat.size(1) - start)) :])
        return out

    @torch.inference_mode()
    def forward(
        self, tokens: Tensor, prompt_tokens: Tensor, prompt_feat: Tensor, embedding: Tensor, noise: Tensor,
        *, streaming: bool = False, finalize: bool = True,
    ) -> Tensor:
        """Mel for ``tokens`` after the prompt. Unless ``finalize``, the last ``lookahead`` tokens are only
        context: their frames are not produced yet. ``streaming`` applies the chunk masks."""
        mu = self.mu(torch.cat([prompt_tokens, tokens]), streaming=streaming, finalize=finalize)
        return self.solve(mu, prompt_feat, self.speaker(embedding), noise, streaming=streaming)


class CausalMaskedDiffWithXvec(_CausalFlow):
    """v2: chunk-causal upsampling conformer, causal U-Net CFM, 2 mel frames per token."""

    def __init__(
        self, *, input_size: int, output_size: int, spk_embed_dim: int, vocab_size: int, token_mel_ratio: int,
        encoder: UpsampleEncoder, decoder: ConditionalCFM,
    ) -> None:
        super().__init__()
        self.token_mel_ratio = token_mel_ratio
        self.input_embedding = nn.Embedding(vocab_size, input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.after_norm.normalized_shape[0], output_size)
        self.decoder = decoder

    @property
    def lookahead(self) -> int:
        return self.encoder.lookahead

    @property
    def chunk_tokens(self) -> int:
        return self.encoder.static_chunk_size

    def mu(self, tokens: Tensor, *, streaming: bool, finalize: bool) -> Tensor:
        x = self.embed(tokens)
        context = None
        if not finalize:
            x, context = x[:, : -self.lookahead], x[:, -self.lookahead :]
        h = self.encoder(x, torch.tensor([x.size(1)], device=x.device), streaming=streaming, context=context)
        return self.encoder_proj(h)

    def _encode(self, session: FlowSession, x: Tensor, context: Tensor | None) -> Tensor:
        return self.encoder_proj(self.encoder.stream(x, context, session.encoder, streaming=session.streaming))


class CausalMaskedDiffWithDiT(_CausalFlow):
    """v3: token embedding plus lookahead conv, repeated x2 as mu, DiT CFM (no conformer)."""

    def __init__(
        self, *, output_size: int, spk_embed_dim: int, vocab_size: int, token_mel_ratio: int,
        pre_lookahead_layer: PreLookaheadLayer, decoder: ConditionalCFM,
    ) -> None:
        super().__init__()
        self.token_mel_ratio = token_mel_ratio
        self.input_embedding = nn.Embedding(vocab_size, output_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.pre_lookahead_layer = pre_lookahead_layer
        self.decoder = decoder

    @property
    def lookahead(self) -> int:
        return self.pre_lookahead_layer.lookahead

    @property
    def chunk_tokens(self) -> int:
        return self.decoder.estimator.static_chunk_size // self.token_mel_ratio

    def mu(self, tokens: Tensor, *, streaming: bool, finalize: bool) -> Tensor:
        del streaming  # the lookahead conv is causal apart from its explicit context
        x = self.embed(tokens)
        if finalize:
            h = self.pre_lookahead_layer(x)
        else:
            h = self.pre_lookahead_layer(x[:, : -self.lookahead], x[:, -self.lookahead :])
        return h.repeat_interleave(self.token_mel_ratio, dim=1)

    def _encode(self, session: FlowSession, x: Tensor, context: Tensor | None) -> Tensor:
        h, session.lookahead_tail = self.pre_lookahead_layer.stream(x, context, session.lookahead_tail)
        return h.repeat_interleave(self.token_mel_ratio, dim=1)


def _condition(session: FlowSession, start: int, length: int, like: Tensor) -> Tensor:
    """The prompt mel where frames ``start ..`` overlap the prompt, zeros after: ``[1, 80, length]``."""
    cond = like.new_zeros(1, length, like.size(1))
    prompt = session.prompt_feat[:, start : start + length]
    cond[:, : prompt.size(1)] = prompt
    return cond.transpose(1, 2)
