"""The three audio feature extractors of the CosyVoice frontend, each callable on its own.

* :func:`prompt_mel`: the flow's log-mel (Matcha-TTS style: reflect padding,
  centre-less STFT, Slaney mel filters, natural log clamped at 1e-5).
* :func:`kaldi_fbank`: Kaldi-compatible log-mel filterbank for CAM++ (25 ms
  povey windows, 10 ms hop, pre-emphasis 0.97, DC removal), mean-normalized.
* :func:`whisper_log_mel`: Whisper's 128-bin log10 mel for the speech tokenizer.
* :func:`resample`: windowed-sinc resampling with torchaudio's default filter.

Inputs are mono float waveforms in [-1, 1] at the rate each extractor expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class MelConfig:
    """``feat_extractor`` of a model config."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = 8000.0


def _hz_to_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _slaney_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


@lru_cache(maxsize=8)
def slaney_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Triangular mel filters on the Slaney scale with area normalization, ``[n_mels, n_fft // 2 + 1]``."""
    fmax = sample_rate / 2 if fmax is None else fmax
    bins = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = _slaney_to_hz(np.linspace(_hz_to_slaney(fmin), _hz_to_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def prompt_mel(wave: Tensor, config: MelConfig) -> Tensor:
    """``[N]`` samples at ``config.sampling_rate`` -> log-mel ``[frames, num_mels]``."""
    pad = (config.n_fft - config.hop_size) // 2
    y = F.pad(wave.float().view(1, 1, -1), (pad, pad), mode="reflect").view(1, -1)
    window = torch.hann_window(config.win_size, device=y.device)
    spec = torch.stft(
        y, config.n_fft, config.hop_size, config.win_size, window=window, center=False, return_complex=True
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    filters = slaney_filters(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
    mel = filters.to(y.device) @ magnitude[0]
    return torch.log(mel.clamp(min=1e-5)).T


@lru_cache(maxsize=4)
def _kaldi_filters(sample_rate: int, padded: int, n_mels: int, low: float = 20.0) -> Tensor:
    def mel(f):
        return 1127.0 * torch.log(1.0 + f / 700.0)

    high = sample_rate / 2
    delta = (mel(torch.tensor(high)) - mel(torch.tensor(low))) / (n_mels + 1)
    left = mel(torch.tensor(low)) + torch.arange(n_mels).unsqueeze(1) * delta
    center, right = left + delta, left + 2 * delta
    freqs = mel(sample_rate / padded * torch.arange(padded // 2)).unsqueeze(0)
    up = (freqs - left) / (center - left)
    down = (right - freqs) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0)
    return F.pad(banks, (0, 1))  # the Nyquist bin gets no weight


def kaldi_fbank(wave: Tensor, sample_rate: int = 16000, n_mels: int = 80) -> Tensor:
    """Kaldi ``compute-fbank-feats`` defaults (no dither), then per-utterance mean removal: ``[frames, n_mels]``."""
    wave = wave.float().view(-1)
    length, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    if wave.numel() < length:
        return torch.zeros(0, n_mels)
    frames = wave.unfold(0, length, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - 0.97 * previous
    frames = frames * torch.hann_window(length, periodic=False).pow(0.85)
    padded = 1 << (length - 1).bit_length()
    power = torch.fft.rfft(F.pad(frames, (0, padded - length))).abs().pow(2)
    energies = power @ _kaldi_filters(sample_rate, padded, n_mels).T
    feats = torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()
    return feats - feats.mean(dim=0, keepdim=True)


def whisper_log_mel(wave: Tensor, n_mels: int = 128) -> Tensor:
    """Whisper's log-mel of 16 kHz audio: ``[n_mels, frames]`` with frames = samples // 160."""
    window = torch.hann_window(400, device=wave.device)
    spec = torch.stft(wave.float().view(-1), 400, 160, window=window, return_complex=True)
    power = spec[..., :-1].abs().pow(2)
    mel = slaney_filters(16000, 400, n_mels).to(wave.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


@lru_cache(maxsize=16)
def _sinc_kernel(up: int, down: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc filters (Hann window) for rational resampling by ``up / down``.

    The same filter bank as torchaudio's default ``Resample`` (``sinc_interp_hann``,
    6 zero crossings, rolloff 0.99), so prompt features match upstream's.
    """
    cutoff = min(up, down) * rolloff
    width = math.ceil(zeros * down / cutoff)
    taps = torch.arange(-width, width + down, dtype=torch.float64) / down
    phases = -torch.arange(up, dtype=torch.float64).view(-1, 1) / up
    t = ((phases + taps) * cutoff).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * (cutoff / down)).to(torch.float32).unsqueeze(1), width


def resample_tensor(wave: Tensor, rate: int, target: int) -> Tensor:
    """``[N]`` float samples from ``rate`` to ``target`` Hz: ``ceil(N * target / rate)`` samples."""
    if rate == target:
        return wave
    common = math.gcd(rate, target)
    down, up = rate // common, target // common
    kernel, width = _sinc_kernel(up, down)
    padded = F.pad(wave.float().view(1, 1, -1), (width, width + down))
    out = F.conv1d(padded, kernel.to(wave.device), stride=down).transpose(1, 2).reshape(-1)
    return out[: math.ceil(up * wave.numel() / down)]


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 ``samples`` from ``rate`` to ``target`` Hz (see :func:`resample_tensor`)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if rate == target:
        return samples
    return resample_tensor(torch.from_numpy(samples), rate, target).numpy()
