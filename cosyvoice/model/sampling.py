"""Speech-token sampling: repetition-aware sampling (RAS) over nucleus sampling.

A seeded ``torch.Generator`` per request makes a request with a seed
reproducible regardless of what other requests run beside it.
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
