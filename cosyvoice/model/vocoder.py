"""Chunked vocoding: mel chunks in, waveform chunks out, several sessions per call.

v1/v2 (:class:`HiftStream`, :func:`vocode`): the non-causal HiFT runs on the
new mel frames behind the last 8 of the previous chunk, continues the previous
excitation and cross-fades the seam (upstream's scheme, checked against it).
Sessions whose chunks have the same shape run as one batch.

v3 (:class:`CausalVocoder`): the causal HiFT runs incrementally, so a chunk
costs what its own frames cost (upstream re-vocodes everything from the first
frame for every chunk). Per session it carries the mel frames the lookahead
convolutions still need, every causal convolution's last inputs, the harmonic
phase accumulated so far (in float64, as the full path's cumulative sum
accumulates), its position in the fixed noise table, the excitation samples
the next STFT frames overlap, and the inverse STFT's overlap-add tail.
Sessions run packed along time, whatever their chunk sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.hift import HiFTGenerator, SourceDraws
from cosyvoice.model.incremental import Packed, SessionState


class HiftStream:
    """One session's chunked vocoding for the non-causal v1/v2 HiFT: carry the last mel frames and the
    excitation's tail into the next chunk, and cross-fade the seam with a Hamming window."""

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
        """Vocode one chunk on its own."""
        return vocode([self], [mel], [final])[0]

    def _input(self, mel: Tensor) -> Tensor:
        return mel if self.mel is None else torch.cat([self.mel, mel], dim=2)

    def _output(self, mel: Tensor, wave: Tensor, source: Tensor, final: bool) -> Tensor:
        wave = wave.cpu()
        if self.tail is not None:
            n = min(self.overlap, wave.numel())
            wave[:n] = wave[:n] * self.window[:n] + self.tail[-n:] * self.window[self.overlap : self.overlap + n]
        if final:
            return wave
        self.mel = mel[:, :, -self.mel_cache :]
        self.source = source[:, :, -self.overlap :]
        self.tail = wave[-self.overlap :]
        return wave[: -self.overlap]


@torch.inference_mode()
def vocode(streams: list[HiftStream], mels: list[Tensor], finals: list[bool]) -> list[Tensor]:
    """One chunk for each stream (all of one model); streams whose inputs have the same shape share a batch.
    Each stream's random draws come from its own generator, so batching does not change them."""
    inputs = [s._input(m) for s, m in zip(streams, mels)]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (stream, mel) in enumerate(zip(streams, inputs)):
        groups.setdefault((mel.size(2), stream.source is not None), []).append(i)
    out: list[Tensor] = [torch.empty(0)] * len(streams)
    for (frames, cached), rows in groups.items():
        hift = streams[rows[0]].hift
        draws = [hift.draw(frames, streams[i].generator) for i in rows]
        draws = SourceDraws(torch.cat([d.phase for d in draws]), torch.cat([d.noise for d in draws]))
        cache = torch.cat([streams[i].source for i in rows]) if cached else None
        waves, sources = hift(torch.cat([inputs[i] for i in rows]), draws, source_cache=cache)
        for row, i in enumerate(rows):
            out[i] = streams[i]._output(inputs[i], waves[row], sources[row : row + 1], finals[i])
    return out


@dataclass
class CausalVocoderSession:
    """One session's incremental state in the causal v3 vocoder (frame counts are mel frames)."""

    frames: int = 0  # received
    f0_frames: int = 0  # with F0 and excitation computed (3 frames of lookahead)
    x_frames: int = 0  # through the upsampling branch (4 frames of lookahead)
    positions: int = 0  # STFT frames done: positions at the last stage, 120 per mel frame (+1 at the start)
    mel: Tensor | None = None  # [1, 80, frames - x_frames]
    phase: Tensor | None = None  # [1, 9, 1] float64: the harmonics' accumulated phase, in cycles
    source: Tensor | None = None  # excitation from sample 4 * positions - 8 (reflected before 0)
    overlap: Tensor | None = None  # [1, 12] inverse-STFT sums of samples still awaiting frames
    envelope: Tensor | None = None  # [12] their window envelope so far
    convs: SessionState = field(default_factory=SessionState)


class CausalVocoder:
    """Incremental vocoding for the causal (v3) HiFT with fixed source draws (``draws.noise`` is read at
    each sample's absolute position; the initial phases do not reach a 24 kHz causal model's output)."""

    F0_LOOKAHEAD, PRE_LOOKAHEAD = 3, 4
    STFT_HALF = 8  # samples each side of an STFT frame's centre (n_fft / 2)

    def __init__(self, hift: HiFTGenerator, draws: SourceDraws) -> None:
        if not hift.causal:
            raise ValueError("the incremental vocoder needs the causal (v3) HiFT")
        self.hift = hift
        self.draws = draws
        self.frame_positions = hift.hop_samples // hift.hop  # STFT frames per mel frame (120)

    def begin(self) -> CausalVocoderSession:
        return CausalVocoderSession()

    @torch.inference_mode()
    def push(self, sessions: list[CausalVocoderSession], mels: list[Tensor], finals: list[bool]) -> list[Tensor]:
        """Append each session's new mel frames ``[1, 80, T]``; return the samples that no longer depend on
        frames to come (all of them when ``final``)."""
        f_ends, x_ends = [], []
        for s, mel, final in zip(sessions, mels, finals):
            s.mel = mel if s.mel is None else torch.cat([s.mel, mel], dim=2)
            s.frames += mel.size(2)
            f_ends.append(s.frames if final else max(s.f0_frames, s.frames - self.F0_LOOKAHEAD))
            x_ends.append(s.frames if final else max(s.x_frames, s.frames - self.PRE_LOOKAHEAD))
        f0 = self._f0(sessions, f_ends)
        specs = self._spectrum(sessions, f0, f_ends, x_ends, finals)
        waves = self._inverse(sessions, self._decode(sessions, specs, x_ends), specs, finals)
        for s, x_end in zip(sessions, x_ends):
            s.mel = s.mel[:, :, x_end - s.x_frames :]
            s.x_frames = x_end
        return waves

    # -- stages ---------------------------------------------------------------
    def _ahead(self, s: CausalVocoderSession, start: int, end: int, lookahead: int) -> Tensor:
        """Mel frames ``start .. end + lookahead`` of ``s``, zeros past the last frame (when final)."""
        if end <= start:
            return s.mel[:, :, :0]
        piece = s.mel[:, :, start - s.x_frames : end + lookahead - s.x_frames]
        return F.pad(piece, (0, end + lookahead - start - piece.size(2)))

    @staticmethod
    def _lookahead_conv(conv: nn.Conv1d, pieces: list[Tensor], counts: list[int]) -> Tensor:
        """A conv that sees only the present and ``k - 1`` future inputs, over packed pieces of
        ``count + k - 1`` inputs each: ``[R, C_out, sum(counts)]``."""
        out = F.conv1d(torch.cat(pieces, dim=2), conv.weight, conv.bias)
        kept, begin = [], 0
        for piece, n in zip(pieces, counts):
            kept.append(out[:, :, begin : begin + n])
            begin += piece.size(2)
        return torch.cat(kept, dim=2)

    def _f0(self, sessions: list[CausalVocoderSession], f_ends: list[int]) -> Tensor:
        """F0 ``[total]`` (float32, computed in float64 as the full path does) of each session's new frames."""
        predictor = self.hift.f0_predictor.double()
        convs = [m for m in predictor.condnet if isinstance(m, nn.Conv1d)]
        counts = [end - s.f0_frames for s, end in zip(sessions, f_ends)]
        pieces = [self._ahead(s, s.f0_frames, end, self.F0_LOOKAHEAD).double() for s, end in zip(sessions, f_ends)]
        h = F.elu(self._lookahead_conv(convs[0], pieces, counts))
        batch = Packed([s.convs for s in sessions], counts, [0] * len(sessions))
        for conv in convs[1:]:
            h = F.elu(batch.conv(conv, h))
        return predictor.classifier(h.transpose(1, 2)).squeeze(-1).abs().float()[0]

    def _excitation(self, s: CausalVocoderSession, f0: Tensor, start: int) -> Tensor:
        """The source ``[samples]`` for frames ``start ..`` with F0 ``f0`` ``[T]``, continuing ``s``'s phase."""
        hift = self.hift
        hop = hift.hop_samples
        orders = torch.arange(1, hift.harmonics + 1, device=f0.device, dtype=f0.dtype)
        rad = ((f0.unsqueeze(-1) * orders / hift.sampling_rate) % 1).T.unsqueeze(0)  # [1, 9, T] cycles per frame
        if s.phase is None:
            s.phase = rad.new_zeros(1, hift.harmonics, 1, dtype=torch.float64)
        total = torch.cumsum(torch.cat([s.phase, rad.double()], dim=2), dim=2)
        s.phase = total[:, :, -1:]
        cycles = total[:, :, 1:].float() * 2 * math.pi * hop
        sines = torch.sin(cycles.repeat_interleave(hop, dim=2)).transpose(1, 2) * hift.sine_amp  # [1, S, 9]
        f0_samples = f0.repeat_interleave(hop).view(1, -1, 1)
        voiced = (f0_samples > hift.voiced_threshold).to(f0.dtype)
        noise_amp = voiced * hift.noise_std + (1 - voiced) * hift.sine_amp / 3
        table = self.draws.noise
        index = torch.arange(start * hop, start * hop + f0_samples.size(1), device=table.device) % table.size(1)
        excitation = sines * voiced + noise_amp * table[:, index].to(f0.device, f0.dtype)
        return torch.tanh(hift.m_source.l_linear(excitation))[0, :, 0]

    def _spectrum(
        self, sessions: list[CausalVocoderSession], f0: Tensor, f_ends: list[int], x_ends: list[int], finals: list[bool]
    ) -> list[Tensor]:
        """Each session's excitation STFT ``[1, 18, n]`` at the new positions its chunk reaches."""
        hift = self.hift
        half = self.STFT_HALF
        parts = f0.split([end - s.f0_frames for s, end in zip(sessions, f_ends)])
        specs = []
        for s, f0_part, f_end, x_end, final in zip(sessions, parts, f_ends, x_ends, finals):
            if f_end > s.f0_frames:
                new = self._excitation(s, f0_part, s.f0_frames).view(1, 1, -1)
                if s.source is None:  # the STFT is centred: reflect before the first sample
                    new = F.pad(new, (half, 0), mode="reflect")
                s.source = new if s.source is None else torch.cat([s.source, new], dim=2)
                s.f0_frames = f_end
            end = self.frame_positions * x_end + 1 if x_end > 0 else 0
            count = end - s.positions
            if count <= 0:
                specs.append(f0.new_zeros(1, hift.n_fft + 2, 0))
                continue
            samples = F.pad(s.source, (0, half), mode="reflect") if final else s.source
            frames = samples[:, 0, : hift.hop * (count - 1) + hift.n_fft]
            spec = torch.stft(frames, hift.n_fft, hift.hop, hift.n_fft, window=hift.window, center=False, return_complex=True)
            specs.append(torch.cat([spec.real, spec.imag], dim=1))
            s.source = s.source[:, :, hift.hop * count :]
            s.positions = end
        return specs

    def _decode(self, sessions: list[CausalVocoderSession], specs: list[Tensor], x_ends: list[int]) -> Tensor:
        """``decode`` from ``conv_pre`` to ``conv_post``, packed: ``[1, 18, positions]``."""
        hift = self.hift
        lengths = [end - s.x_frames for s, end in zip(sessions, x_ends)]
        pieces = [self._ahead(s, s.x_frames, end, self.PRE_LOOKAHEAD) for s, end in zip(sessions, x_ends)]
        x = self._lookahead_conv(hift.conv_pre, pieces, lengths)
        states = [s.convs for s in sessions]
        starts = [0] * len(sessions)
        for i, (up, rate) in enumerate(zip(hift.ups, hift.upsample_rates)):
            lengths = [n * rate for n in lengths]
            x = Packed(states, lengths, starts).conv(up, F.leaky_relu(x, hift.lrelu_slope).repeat_interleave(rate, dim=2))
            if i == len(hift.ups) - 1:  # the reflected first position of the last stage, at a session's start
                parts = [
                    torch.cat([part[:, :, 1:2], part], dim=2) if s.x_frames == 0 and n > 0 else part
                    for s, part, n in zip(sessions, x.split(lengths, dim=2), lengths)
                ]
                lengths = [part.size(2) for part in parts]
                x = torch.cat(parts, dim=2)
            batch = Packed(states, lengths, starts)
            x = x + hift.source_resblocks[i](self._downsample(hift.source_downs[i], sessions, specs), batch)
            blocks = hift.resblocks[i * hift.kernels : (i + 1) * hift.kernels]
            x = sum(block(x, batch) for block in blocks) / hift.kernels
        return batch.conv(hift.conv_post, F.leaky_relu(x))

    @staticmethod
    def _downsample(conv: nn.Conv1d, sessions: list[CausalVocoderSession], specs: list[Tensor]) -> Tensor:
        """A source downsampling conv (strided, causal) over each session's new STFT frames, after the
        frames its next output window still overlaps."""
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        if kernel == 1:
            return F.conv1d(torch.cat(specs, dim=2), conv.weight, conv.bias)
        out = []
        for s, spec in zip(sessions, specs):
            tail = s.convs.tails.get(conv)
            if tail is None:
                tail = spec.new_zeros(1, spec.size(1), conv.pad[0])
            padded = torch.cat([tail, spec], dim=2)
            count = max(0, (padded.size(2) - kernel) // stride + 1)
            if count:
                out.append(F.conv1d(padded, conv.weight, conv.bias, stride=stride))
            s.convs.tails[conv] = padded[:, :, stride * count :]
        if not out:
            return specs[0].new_zeros(1, conv.out_channels, 0)
        return torch.cat(out, dim=2)

    def _inverse(
        self, sessions: list[CausalVocoderSession], x: Tensor, specs: list[Tensor], finals: list[bool]
    ) -> list[Tensor]:
        """Magnitude and phase to samples: inverse STFT by overlap-add, carrying the unfinished tail."""
        hift = self.hift
        n_fft, hop, half = hift.n_fft, hift.hop, self.STFT_HALF
        bins = n_fft // 2 + 1
        spectrum = torch.polar(torch.exp(x[:, :bins]).clamp(max=1e2), torch.sin(x[:, bins:]))
        frames = torch.fft.irfft(spectrum, n=n_fft, dim=1) * hift.window.view(1, -1, 1)  # [1, n_fft, positions]
        squares = hift.window.pow(2).view(1, -1, 1)
        lengths = [spec.size(2) for spec in specs]
        waves = []
        for s, part, n, final in zip(sessions, frames.split(lengths, dim=2), lengths, finals):
            if n == 0:
                waves.append(x.new_zeros(0))
                continue
            size = hop * n + n_fft - hop
            summed = F.fold(part, (1, size), (1, n_fft), stride=(1, hop))[0, 0, 0]
            envelope = F.fold(squares.expand(1, n_fft, n), (1, size), (1, n_fft), stride=(1, hop))[0, 0, 0]
            first = s.overlap is None
            if not first:
                summed[: n_fft - hop] += s.overlap
                envelope[: n_fft - hop] += s.envelope
            done = hop * n + (hop if final else 0)  # the centred STFT's last n_fft / 2 samples are trimmed
            s.overlap, s.envelope = summed[done:], envelope[done:]
            wave = (summed[:done] / envelope[:done])[half if first else 0 :]
            waves.append(wave.clamp(-hift.audio_limit, hift.audio_limit).cpu())
        return waves
