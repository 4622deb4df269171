"""Float32 error budgets for comparing two implementations of the same computation.

Two float32 results of one computation differ by how each rounds, and CPU
kernels (ATen's default/AVX2/AVX-512 code, oneDNN's ISA levels, AMX, the
thread count) differ in exactly that: how they order and block their sums.
So a tolerance is a bound on float32 rounding for that computation, relative
to the size of what is compared, never a measured difference with a margin
(a suite tuned that way fails on the next CPU: the Whisper log-mel of one
machine differed from another's by 7.3e-5 where 1e-5 was allowed; both
differ from the float64 result by up to 9e-5).

* A sum of ``n`` terms rounds like a random walk: about ``EPS * sqrt(n)`` of
  the terms' size; a chain of layers adds its sums' errors like one longer sum.
* What follows the sums may amplify a relative error (its condition number):
  a log of a quiet band divides by that band's level; guidance ``1.7 v - 0.7 u``
  scales errors by up to 2.4; a sine of an accumulated phase turns a relative
  error of the frequency into an absolute error of the phase that grows with
  the number of cycles.

test_kernel_choices.py runs the parity tests under other kernels to show the
bounds hold; test_parity.py's test_tolerances_catch_mistakes shows plausible
bugs miss them widely.
"""

from __future__ import annotations

import math

import torch

EPS = torch.finfo(torch.float32).eps  # 1.19e-7: float32's relative rounding
VOCODER_F0_MAX = 200.0  # Hz: the tiny models' F0 (their predictor's bias is 180 Hz; test_hift measures <= 185)
# log-probabilities: at most 4 transformer layers on the path (v1: 2 text-encoder and 2 LM layers), each
# ending in sums of at most 128 terms (the FFN); pre-norms keep every layer's error relative to the same
# scale, so the layers add like one sum of 4 x 128 terms; log-softmax passes logit errors on unchanged
LLM_TERMS = 4 * 128
# mel: ten solver steps, each a chain whose longest sums have 2048 terms (the v2 encoder's lookahead conv,
# 512 channels x 4 taps), added like one sum; guidance 1.7 v - 0.7 u scales errors by up to 2.4
FLOW_TERMS, FLOW_CONDITION = 10 * 2048, 2.4
# the vocoder's own sums: about 20 convolutions in series, the widest summing 512 terms (tiny models)
VOCODER_TERMS = 20 * 512


def scale(reference: torch.Tensor) -> float:
    """The size of a compared signal: its largest magnitude."""
    return reference.float().abs().max().item()


def rounding(size: float, terms: int, condition: float = 1.0) -> float:
    """``EPS * sqrt(terms) * condition * size``: the rounding of a result of magnitude ``size`` made by sums
    of ``terms`` terms in all, amplified ``condition`` times after them."""
    return EPS * math.sqrt(terms) * condition * size


def waveform(size: float, seconds: float, harmonics: int = 9) -> float:
    """Vocoder output of magnitude ``size`` over ``seconds`` (float32 F0 and phase): the network's own sums
    plus the excitation's phase, a float32 of magnitude 2 pi * harmonics * F0 * seconds that any rounding of
    F0 or of the phase's own cumulative sum shifts by EPS of itself (the harmonic source is a sine of it;
    the wave follows the source's relative error)."""
    phase = 2 * math.pi * harmonics * VOCODER_F0_MAX * seconds
    return EPS * (math.sqrt(VOCODER_TERMS) + phase) * size


def log_band(
    reference: torch.Tensor, n_fft: int, *, power: bool, log_base: float, divide: float, dim: int, input_error: float = 0.0
) -> torch.Tensor:
    """Per element, for log-mel features ``log(band) / divide`` (``reference``, bands along ``dim``).

    An FFT of ``n_fft`` points rounds every bin by about ``EPS * sqrt(n_fft)`` of the frame's loudest bin,
    so a band's relative error is that times (loudest band / this band) in magnitude, the square root of
    that ratio for power (|X|^2 has twice the relative error of |X|); the log turns a relative error into
    an absolute one, divided by ln(base). The ratio comes from the reference itself (the frame's
    loudest band minus this one, in the feature's units); floors (clamps) only lower the true ratio.
    ``input_error``: the input's own relative error (of its peak), which enters every bin the same way.
    """
    below = reference.max(dim=dim, keepdim=True).values - reference  # >= 0, log units / divide
    levels = torch.exp(below.double() * divide * math.log(log_base))  # loudest band / this band
    amplification = 2 * levels.sqrt() if power else levels
    fft = (EPS * math.sqrt(n_fft) + input_error) * amplification / (math.log(log_base) * divide)
    return (fft + 2 * EPS * reference.double().abs()).float()  # + the log's and the final map's own rounding


def ratio(ours: torch.Tensor, theirs: torch.Tensor, bound: torch.Tensor | float) -> float:
    """The largest error as a fraction of its bound (elementwise where the bound is a tensor): < 1 passes."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    return ((ours.double() - theirs.double()).abs() / bound).max().item()


def kaldi_fbank(reference: torch.Tensor, n_fft: int = 512, top_hz: float = 8000.0, low_hz: float = 20.0,
                bands: int = 80) -> torch.Tensor:
    """Per element, for mean-normalized Kaldi log filterbanks ``[frames, bands]`` (natural log of power).

    Three roundings: the FFT's, as in :func:`log_band`; the triangles', whose edges are Kaldi-mel values up
    to 1127 ln(1 + top/700) (a float32 there is good to one ulp) over a band spacing of about 35 mel, so a
    weight moves by ulp / spacing, which matters most where a neighbouring band's loud bin sits on this
    band's edge (relative error: that over this band's level relative to the neighbour's); and the mean
    over frames, which spreads every frame's error over its band.
    """
    ref = reference.double()
    below = ref.max(dim=1, keepdim=True).values - ref
    fft = 2 * EPS * math.sqrt(n_fft) * torch.exp(below / 2)
    top = 1127 * math.log(1 + top_hz / 700)
    spacing = (top - 1127 * math.log(1 + low_hz / 700)) / (bands + 1)
    weight = 2.0 ** (math.floor(math.log2(top)) - 23) / spacing
    edges = torch.nn.functional.pad(ref.unsqueeze(0), (1, 1), mode="replicate")[0]
    neighbour = torch.exp((torch.maximum(edges[:, :-2], edges[:, 2:]) - ref).clamp(min=0))
    frame = fft + weight * neighbour
    return (frame + frame.mean(dim=0, keepdim=True)).float()
