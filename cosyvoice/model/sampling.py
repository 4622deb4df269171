"""Speech-token sampling: repetition-aware sampling (RAS) over nucleus sampling.

A seeded ``torch.Generator`` per request makes a request with a seed
reproducible regardless of what other requests run beside it. :func:`ras`
draws as upstream does (a nucleus draw, then a redraw on a repeat);
:func:`ras_distribution` is the same distribution in closed form, for a
sampler that draws once from given probabilities (vLLM's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingOptions:
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1


def nucleus(logp: Tensor, options: SamplingOptions, generator: torch.Generator | None) -> int:
    """Draw from the smallest top-k set whose mass reaches top_p (the crossing token included)."""
    probs = logp.float().softmax(dim=-1)
    sorted_probs, order = probs.sort(descending=True, stable=True)
    mass_before = sorted_probs.cumsum(0) - sorted_probs
    rank = torch.arange(sorted_probs.numel(), device=probs.device)
    keep = (mass_before < options.top_p) & (rank < options.top_k)
    kept = sorted_probs[keep]
    choice = torch.multinomial(kept, 1, generator=generator)
    return int(order[keep][choice])


def ras(logp: Tensor, history: list[int], options: SamplingOptions, generator: torch.Generator | None) -> int:
    """Nucleus sampling; a token repeated within the last ``win_size`` is redrawn from the full distribution."""
    token = nucleus(logp, options, generator)
    recent = history[-options.win_size :]
    if recent.count(token) >= options.win_size * options.tau_r:
        logp = logp.float().clone()
        logp[token] = float("-inf")
        token = int(torch.multinomial(logp.softmax(dim=-1), 1, generator=generator))
    return token


def ras_distribution(logp: Tensor, histories: list[list[int]], options: SamplingOptions) -> Tensor:
    """What :func:`ras` draws from, for a batch: ``logp`` ``[B, V]`` log-probabilities (stop tokens at
    -inf where they are barred) -> probabilities ``[B, V]``.

    With ``p`` the distribution, ``n`` its nucleus renormalized and ``R`` the
    tokens repeated often enough in a row's window, a token ``t`` comes either
    from the nucleus (if not in ``R``) or from a redraw after a repeated ``s``:
    ``q(t) = n(t) [t not in R] + p(t) * sum over s in R, s != t of n(s) / (1 - p(s))``.
    """
    probs = logp.float().softmax(dim=-1)
    top, order = probs.topk(min(options.top_k, probs.size(-1)), dim=-1)
    keep = (top.cumsum(dim=-1) - top) < options.top_p
    kept = top * keep
    nucleus = torch.zeros_like(probs).scatter_(-1, order, kept / kept.sum(dim=-1, keepdim=True))
    counts = torch.zeros_like(probs)
    for row, history in enumerate(histories):
        recent = history[-options.win_size :]
        if recent:
            index = torch.tensor(recent, device=probs.device)
            counts[row].index_add_(0, index, torch.ones(len(recent), device=probs.device))
    repeated = counts >= options.win_size * options.tau_r
    weight = torch.where(repeated, nucleus / (1 - probs).clamp(min=1e-12), torch.zeros_like(probs))
    redraw = probs * (weight.sum(dim=-1, keepdim=True) - weight)
    return nucleus * ~repeated + redraw
