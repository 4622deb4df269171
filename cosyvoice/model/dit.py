"""The v3 flow estimator: a diffusion transformer (DiT) with adaptive LayerNorm.

Specifics that matter for the official weights: inputs are concatenated as
[x, cond, mu, speaker]; a causal grouped-conv position embedding is added
residually; rotary embedding covers only the first ``dim_head`` channels of
q and k *before* the head split (so only head 0 rotates), with interleaved
pairs as x-transformers 2.x does; block modulation chunks are (shift, scale,
gate) x (attention, MLP) while the final norm's are (scale, shift); the MLP
uses tanh-approximated GELU. Everything is causal or chunk-causal, so the DiT
also runs incrementally over packed sessions (:meth:`DiT.stream`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.conformer import chunk_mask
from cosyvoice.model.incremental import Packed
from cosyvoice.model.unet import Attend, timestep_embedding


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.time_mlp(timestep_embedding(t, self.freq_dim))


class CausalConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv1 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())

    def forward(self, x: Tensor, batch: Packed | None = None) -> Tensor:
        h = x.transpose(1, 2)
        for conv, act in (self.conv1, self.conv2):
            h = act(conv(F.pad(h, (self.kernel_size - 1, 0))) if batch is None else batch.conv(conv, h))
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, mel_dim: int, mu_dim: int, spk_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + mu_dim + spk_dim, dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(dim)

    def forward(self, x: Tensor, cond: Tensor, mu: Tensor, spks: Tensor, batch: Packed | None = None) -> Tensor:
        """``x``, ``cond``, ``mu`` ``[B, T, C]``; ``spks`` ``[B, C]``, or ``[B, T, C]`` already per frame."""
        if spks.dim() == 2:
            spks = spks.unsqueeze(1).expand(-1, x.size(1), -1)
        h = self.proj(torch.cat([x, cond, mu, spks], dim=-1))
        return self.conv_pos_embed(h, batch) + h


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, length: int) -> Tensor:
        """Angles ``[length, dim]`` for positions 0 .. length - 1."""
        return self.at(torch.arange(length, device=self.inv_freq.device))

    def at(self, positions: Tensor) -> Tensor:
        """Angles ``[len(positions), dim]``, each frequency repeated for its (even, odd) pair."""
        return (positions.float().unsqueeze(1) * self.inv_freq.unsqueeze(0)).repeat_interleave(2, dim=-1)


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate the first ``angles.size(-1)`` channels of ``x`` in interleaved pairs; leave the rest."""
    width = angles.size(-1)
    rotated, rest = x[..., :width], x[..., width:]
    pairs = rotated.unflatten(-1, (-1, 2))
    swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return torch.cat([rotated * angles.cos() + swapped * angles.sin(), rest], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: Tensor, angles: Tensor, attend: Attend) -> Tensor:
        b, t, _ = x.shape
        q = apply_rotary(self.to_q(x), angles)
        k = apply_rotary(self.to_k(x), angles)
        v = self.to_v(x)
        q, k, v = (h.view(b, t, self.heads, -1).transpose(1, 2) for h in (q, k, v))
        out = attend(self, q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class AdaNorm(nn.Module):
    """Non-affine LayerNorm modulated by a linear map of the time embedding (``linear``)."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * chunks)
        self.chunks = chunks
        self.dim = dim

    def modulation(self, time: Tensor) -> tuple[Tensor, ...]:
        return self.linear(F.silu(time)).chunk(self.chunks, dim=-1)

    def norm(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,), eps=1e-6)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.attn_norm = AdaNorm(dim, 6)
        self.attn = Attention(dim, heads, dim_head)
        self.ff = nn.Module()
        self.ff.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, dim * ff_mult), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(dim * ff_mult, dim),
        )

    def forward(self, x: Tensor, time: Tensor, angles: Tensor, attend: Attend, keep: Tensor | None = None) -> Tensor:
        """``keep`` ``[B, T]``: positions whose attention output counts (the full path's padding mask)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.attn_norm.modulation(time)
        h = self.attn_norm.norm(x) * (1 + scale_a.unsqueeze(1)) + shift_a.unsqueeze(1)
        attended = self.attn(h, angles, attend)
        if keep is not None:
            attended = attended.masked_fill(~keep.unsqueeze(-1), 0.0)
        x = x + gate_a.unsqueeze(1) * attended
        h = self.attn_norm.norm(x) * (1 + scale_m.unsqueeze(1)) + shift_m.unsqueeze(1)
        return x + gate_m.unsqueeze(1) * self.ff.ff(h)


class DiT(nn.Module):
    """``decoder.estimator`` of CosyVoice 3; called like the U-Net."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int = 64,
        ff_mult: int = 2,
        mel_dim: int = 80,
        mu_dim: int = 80,
        spk_dim: int = 80,
        out_channels: int = 80,
        static_chunk_size: int = 50,
    ) -> None:
        super().__init__()
        self.static_chunk_size = static_chunk_size
        self.time_embed = TimeEmbedding(dim)
        self.input_embed = InputEmbedding(mel_dim, mu_dim, spk_dim, dim)
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.norm_out = AdaNorm(dim, 2)
        self.proj_out = nn.Linear(dim, out_channels)

    def forward(
        self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, streaming: bool = False
    ) -> Tensor:
        time = self.time_embed(t)
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks)
        size = h.size(1)
        allowed = mask.bool().expand(-1, size, -1)
        if streaming:
            allowed = allowed & chunk_mask(size, self.static_chunk_size, h.device).unsqueeze(0)
        heads_mask = allowed.unsqueeze(1)

        def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=heads_mask)

        angles = self.rotary_embed(size)
        for block in self.transformer_blocks:
            h = block(h, time, angles, attend, allowed[:, -1])
        return self._out(h, time)

    def stream(self, x: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, batch: Packed) -> Tensor:
        """The velocity at the new frames of packed sessions; arguments as :meth:`ConditionalDecoder.stream`."""
        def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return batch.attend(module, q, k, v, self.static_chunk_size)

        time = self.time_embed(t)
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks.transpose(1, 2), batch)
        angles = self.rotary_embed.at(batch.positions(h.device))
        for block in self.transformer_blocks:
            h = block(h, time, angles, attend)
        return self._out(h, time)

    def _out(self, h: Tensor, time: Tensor) -> Tensor:
        scale, shift = self.norm_out.modulation(time)
        h = self.norm_out.norm(h) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        return self.proj_out(h).transpose(1, 2)
