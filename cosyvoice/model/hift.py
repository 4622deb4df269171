"""HiFT: the neural-source-filter + iSTFT vocoder (mel -> waveform).

An F0 predictor drives a harmonic sine source (9 harmonics); the source's
STFT is fused into a HiFi-GAN-style upsampler whose output is a magnitude and
phase spectrogram for an inverse STFT. The random parts (initial harmonic
phases and the additive noise) are arguments (:class:`SourceDraws`), so a
caller can make them deterministic; weight norm is folded at load time.

v1/v2 (``HiFTGenerator``) are non-causal; v3 (``causal=True``) uses causal
convolutions with a 4-frame (``conv_pre``) and 3-frame (F0) lookahead, and
runs incrementally too (:mod:`cosyvoice.model.vocoder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.incremental import Packed


@dataclass
class SourceDraws:
    """The source's randomness: ``phase`` ``[B, 9]`` initial phases in radians (harmonic 0 is
    ignored: it always starts at 0) and ``noise`` ``[B, samples, 9]`` per-harmonic noise
    (standard normal for v1/v2, uniform [0, 1) for v3, as upstream draws them)."""

    phase: Tensor
    noise: Tensor


class Snake(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.view(1, -1, 1)
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(alpha * x).pow(2)


class Conv(nn.Conv1d):
    """A conv with explicit (left, right) zero padding; causal variants pad only one side."""

    def __init__(self, *args, pad: tuple[int, int] = (0, 0), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad) if any(self.pad) else x)


def _same(kernel: int, dilation: int = 1) -> tuple[int, int]:
    total = (kernel - 1) * dilation
    return total // 2, total // 2


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int], *, causal: bool) -> None:
        super().__init__()

        def pad(d: int) -> tuple[int, int]:
            return ((kernel - 1) * d, 0) if causal else _same(kernel, d)

        self.convs1 = nn.ModuleList(Conv(channels, channels, kernel, dilation=d, pad=pad(d)) for d in dilations)
        self.convs2 = nn.ModuleList(Conv(channels, channels, kernel, pad=pad(1)) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor, batch: Packed | None = None) -> Tensor:
        """Causal blocks also run incrementally over packed sessions (``batch``)."""
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            if batch is None:
                x = x + conv2(act2(conv1(act1(x))))
            else:
                x = x + batch.conv(conv2, act2(batch.conv(conv1, act1(x))))
        return x


class F0Predictor(nn.Module):
    """Five conv+ELU layers and a linear head; F0 is the absolute value (``f0_predictor``)."""

    def __init__(self, in_channels: int, channels: int, *, causal: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            if causal:
                kernel, pad = (4, (0, 3)) if i == 0 else (3, (2, 0))
            else:
                kernel, pad = 3, (1, 1)
            layers += [Conv(in_channels if i == 0 else channels, channels, kernel, pad=pad), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class UpsampleConv(nn.Conv1d):
    """v3 ``ups.i``: nearest-neighbour upsampling then a causal conv (weights ``[out, in, k]``)."""

    def __init__(self, cin: int, cout: int, kernel: int, rate: int) -> None:
        super().__init__(cin, cout, kernel)
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=self.rate, mode="nearest")
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class HiFTGenerator(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 80,
        base_channels: int = 512,
        nb_harmonics: int = 8,
        sampling_rate: int = 22050,
        nsf_alpha: float = 0.1,
        nsf_sigma: float = 0.003,
        nsf_voiced_threshold: float = 10,
        upsample_rates: list[int] = (8, 8),
        upsample_kernel_sizes: list[int] = (16, 16),
        istft_params: dict[str, int] | None = None,
        resblock_kernel_sizes: list[int] = (3, 7, 11),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5),) * 3,
        source_resblock_kernel_sizes: list[int] = (7, 11),
        source_resblock_dilation_sizes: list[list[int]] = ((1, 3, 5),) * 2,
        lrelu_slope: float = 0.1,
        audio_limit: float = 0.99,
        f0_channels: int = 512,
        causal: bool = False,
        conv_pre_look_right: int = 4,
    ) -> None:
        super().__init__()
        istft_params = istft_params or {"n_fft": 16, "hop_len": 4}
        self.n_fft, self.hop = istft_params["n_fft"], istft_params["hop_len"]
        self.sampling_rate = sampling_rate
        self.harmonics = nb_harmonics + 1
        self.sine_amp, self.noise_std, self.voiced_threshold = nsf_alpha, nsf_sigma, nsf_voiced_threshold
        self.lrelu_slope, self.audio_limit = lrelu_slope, audio_limit
        self.causal = causal
        self.look_right = conv_pre_look_right if causal else 0
        self.upsample_rates = list(upsample_rates)
        self.hop_samples = math.prod(upsample_rates) * self.hop
        self.kernels = len(resblock_kernel_sizes)
        bins = self.n_fft + 2

        self.m_source = nn.Module()
        self.m_source.l_linear = nn.Linear(self.harmonics, 1)
        self.f0_predictor = F0Predictor(in_channels, f0_channels, causal=causal)
        if causal:
            self.conv_pre = Conv(in_channels, base_channels, self.look_right + 1, pad=(0, self.look_right))
        else:
            self.conv_pre = Conv(in_channels, base_channels, 7, pad=(3, 3))
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            cin, cout = base_channels // 2**i, base_channels // 2 ** (i + 1)
            if causal:
                self.ups.append(UpsampleConv(cin, cout, kernel, rate))
            else:
                self.ups.append(nn.ConvTranspose1d(cin, cout, kernel, rate, padding=(kernel - rate) // 2))
        down_rates = [1] + list(upsample_rates[::-1][:-1])
        cumulative = [math.prod(down_rates[: i + 1]) for i in range(len(down_rates))][::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (rate, kernel, dilations) in enumerate(
            zip(cumulative, source_resblock_kernel_sizes, source_resblock_dilation_sizes)
        ):
            channels = base_channels // 2 ** (i + 1)
            if rate == 1:
                self.source_downs.append(Conv(bins, channels, 1))
            elif causal:
                self.source_downs.append(Conv(bins, channels, rate * 2, stride=rate, pad=(rate - 1, 0)))
            else:
                self.source_downs.append(Conv(bins, channels, rate * 2, stride=rate, pad=(rate // 2, rate // 2)))
            self.source_resblocks.append(ResBlock(channels, kernel, list(dilations), causal=causal))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            channels = base_channels // 2 ** (i + 1)
            for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock(channels, kernel, list(dilations), causal=causal))
        last = base_channels // 2 ** len(self.ups)
        self.conv_post = Conv(last, bins, 7, pad=(6, 0) if causal else (3, 3))
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)

    # -- the random draws ---------------------------------------------------
    def draw(self, frames: int, generator: torch.Generator | None = None, batch: int = 1) -> SourceDraws:
        """Fresh random draws for ``frames`` mel frames, as upstream takes them on each call."""
        samples = frames * self.hop_samples
        if self.causal:
            phase = torch.rand(batch, self.harmonics, generator=generator) * 2 * math.pi
            return SourceDraws(phase, torch.rand(batch, samples, self.harmonics, generator=generator))
        if self.sampling_rate == 22050:
            phase = torch.rand(batch, self.harmonics, generator=generator) * 2 * math.pi - math.pi
        else:
            phase = torch.rand(batch, self.harmonics, generator=generator) * 2 * math.pi
        return SourceDraws(phase, torch.randn(batch, samples, self.harmonics, generator=generator))

    # -- stages ---------------------------------------------------------------
    def f0(self, mel: Tensor) -> Tensor:
        """``[B, frames]`` Hz (v3 computes it in float64)."""
        if self.causal:
            return self.f0_predictor.double()(mel.double()).float()
        return self.f0_predictor(mel)

    def source(self, f0: Tensor, draws: SourceDraws) -> Tensor:
        """The excitation ``[B, 1, samples]`` for frame-rate ``f0``."""
        f0 = f0.unsqueeze(1).repeat_interleave(self.hop_samples, dim=2).transpose(1, 2)  # [B, samples, 1]
        samples = f0.size(1)
        harmonics = f0 * torch.arange(1, self.harmonics + 1, device=f0.device, dtype=f0.dtype)
        phase = draws.phase.to(f0.device, f0.dtype).clone()
        phase[:, 0] = 0
        if self.sampling_rate == 22050 and not self.causal:
            turns = torch.cumsum(harmonics / self.sampling_rate, dim=1) % 1
            sines = torch.sin(2 * math.pi * turns + phase.unsqueeze(1))
        else:
            rad = (harmonics / self.sampling_rate) % 1
            rad[:, 0, :] = rad[:, 0, :] + phase / (2 * math.pi)
            rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.hop_samples, mode="linear")
            cycles = torch.cumsum(rad, dim=2) * 2 * math.pi * self.hop_samples
            mode = "nearest" if self.causal else "linear"
            sines = torch.sin(F.interpolate(cycles, scale_factor=self.hop_samples, mode=mode)).transpose(1, 2)
        sines = sines * self.sine_amp
        voiced = (f0 > self.voiced_threshold).to(f0.dtype)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        table = draws.noise
        if table.size(1) < samples:  # a fixed table shorter than the audio repeats
            table = table.repeat(1, math.ceil(samples / table.size(1)), 1)
        noise = noise_amp * table[:, :samples].to(f0.device, f0.dtype)
        excitation = sines * voiced + noise
        return torch.tanh(self.m_source.l_linear(excitation)).transpose(1, 2)

    def decode(self, mel: Tensor, source: Tensor) -> Tensor:
        spec = torch.stft(source.squeeze(1), self.n_fft, self.hop, self.n_fft, window=self.window, return_complex=True)
        spec = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](spec))
            blocks = self.resblocks[i * self.kernels : (i + 1) * self.kernels]
            x = sum(block(x) for block in blocks) / self.kernels
        x = self.conv_post(F.leaky_relu(x))
        bins = self.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        phase = torch.sin(x[:, bins:])
        wave = torch.istft(torch.polar(magnitude, phase), self.n_fft, self.hop, self.n_fft, window=self.window)
        return wave.clamp(-self.audio_limit, self.audio_limit)

    @torch.inference_mode()
    def forward(
        self, mel: Tensor, draws: SourceDraws | None = None, *, source_cache: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Waveform ``[B, samples]`` and the excitation ``[B, 1, samples]`` for ``mel`` ``[B, 80, frames]``.

        ``source_cache`` replaces the start of the excitation (phase continuity
        across chunks); ``draws`` default to fresh ones from ``generator``.
        """
        if draws is None:
            draws = self.draw(mel.size(-1), generator, mel.size(0))
        source = self.source(self.f0(mel), draws)
        if source_cache is not None and source_cache.size(-1) > 0:
            source[:, :, : source_cache.size(-1)] = source_cache
        return self.decode(mel, source), source
