"""The v1/v2 flow estimator: a 1-D U-Net of ResNet blocks and transformer blocks (Matcha-TTS style).

v1 is non-causal (GroupNorm blocks, a down/up-sampling level pair); v2 is
causal (left-padded convs, LayerNorm blocks, a single level) and, when
streaming, attends within 50-frame chunks counted from the first frame.
Being causal, v2 also runs incrementally (:meth:`ConditionalDecoder.stream`):
only a chunk's new frames, with the convolution inputs and attention
keys/values of earlier frames carried per session.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.conformer import chunk_mask
from cosyvoice.model.incremental import Packed

Attend = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]  # (module, q, k, v) -> attention output


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoids of ``scale * t``: ``[sin | cos]`` with log(10000)/(half - 1) spacing."""
    half = dim // 2
    rate = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = scale * t.float().unsqueeze(1) * rate.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class CausalConv1d(nn.Conv1d):
    """A stride-1 conv that sees only the past: left padding of kernel - 1."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class Transpose(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class Block1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, *, causal: bool) -> None:
        super().__init__()
        if causal:
            self.block = nn.Sequential(
                CausalConv1d(dim, dim_out, 3), Transpose(), nn.LayerNorm(dim_out), Transpose(), nn.Mish()
            )
        else:
            self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(8, dim_out), nn.Mish())

    def forward(self, x: Tensor, mask: Tensor | None, batch: Packed | None = None) -> Tensor:
        """Full path: ``mask`` ``[B, 1, T]``; incremental (causal only): ``batch``, no mask."""
        if batch is None:
            return self.block(x * mask) * mask
        conv, *rest = self.block
        x = batch.conv(conv, x)
        for layer in rest:
            x = layer(x)
        return x


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int, *, causal: bool) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, causal=causal)
        self.block2 = Block1D(dim_out, dim_out, causal=causal)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: Tensor, mask: Tensor | None, time: Tensor, batch: Packed | None = None) -> Tensor:
        h = self.block1(x, mask, batch) + self.mlp(time).unsqueeze(-1)
        return self.block2(h, mask, batch) + self.res_conv(x if mask is None else x * mask)


class Downsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: Tensor, attend: Attend) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = attend(self, q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class GeluProjection(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProjection(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm self-attention then feed-forward (``norm1``/``attn1``/``norm3``/``ff``)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, attend: Attend) -> Tensor:
        x = x + self.attn1(self.norm1(x), attend)
        return x + self.ff(self.norm3(x))


class ConditionalDecoder(nn.Module):
    """Predicts the flow's velocity from [x, mu, speaker, cond] (``decoder.estimator``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: list[int],
        *,
        attention_head_dim: int = 64,
        n_blocks: int = 1,
        num_mid_blocks: int = 2,
        num_heads: int = 4,
        causal: bool = False,
        static_chunk_size: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.causal = causal
        self.static_chunk_size = static_chunk_size
        time_dim = channels[0] * 4

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, num_heads, attention_head_dim) for _ in range(n_blocks))

        def level_conv(dim: int, last: bool, sampler: type[nn.Module]) -> nn.Module:
            if causal:
                return CausalConv1d(dim, dim, 3)
            return nn.Conv1d(dim, dim, 3, padding=1) if last else sampler(dim)

        self.time_mlp = nn.Module()
        self.time_mlp.linear_1 = nn.Linear(in_channels, time_dim)
        self.time_mlp.linear_2 = nn.Linear(time_dim, time_dim)
        self.down_blocks = nn.ModuleList()
        width = in_channels
        for i, dim in enumerate(channels):
            last = i == len(channels) - 1
            self.down_blocks.append(
                nn.ModuleList(
                    [ResnetBlock1D(width, dim, time_dim, causal=causal), transformers(dim), level_conv(dim, last, Downsample1D)]
                )
            )
            width = dim
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(width, width, time_dim, causal=causal), transformers(width)])
            for _ in range(num_mid_blocks)
        )
        ups = list(channels[::-1]) + [channels[0]]
        self.up_blocks = nn.ModuleList()
        for i in range(len(ups) - 1):
            last = i == len(ups) - 2
            self.up_blocks.append(
                nn.ModuleList(
                    [
                        ResnetBlock1D(ups[i] * 2, ups[i + 1], time_dim, causal=causal),
                        transformers(ups[i + 1]),
                        level_conv(ups[i + 1], last, Upsample1D),
                    ]
                )
            )
        self.final_block = Block1D(ups[-1], ups[-1], causal=causal)
        self.final_proj = nn.Conv1d(ups[-1], out_channels, 1)

    def _attend(self, x: Tensor, blocks: nn.ModuleList, mask: Tensor, streaming: bool) -> Tensor:
        size = mask.size(-1)
        allowed = mask.bool().expand(-1, size, -1)
        if streaming and self.causal and self.static_chunk_size > 0:
            allowed = allowed & chunk_mask(size, self.static_chunk_size, mask.device).unsqueeze(0)
        allowed = allowed.unsqueeze(1)

        def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

        return _transformers(x, blocks, attend)

    def forward(
        self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, streaming: bool = False
    ) -> Tensor:
        """``x``, ``mu``, ``cond`` ``[B, 80, T]``; ``mask`` ``[B, 1, T]``; ``t`` ``[B]``; ``spks`` ``[B, 80]``."""
        time = timestep_embedding(t, self.in_channels)
        time = self.time_mlp.linear_2(F.silu(self.time_mlp.linear_1(time)))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.size(-1)), cond], dim=1)
        masks, skips = [mask], []
        for resnet, blocks, sampler in self.down_blocks:
            level_mask = masks[-1]
            x = resnet(x, level_mask, time)
            x = self._attend(x, blocks, level_mask, streaming)
            skips.append(x)
            x = sampler(x * level_mask)
            masks.append(level_mask[:, :, ::2])
        masks.pop()
        for resnet, blocks in self.mid_blocks:
            x = resnet(x, masks[-1], time)
            x = self._attend(x, blocks, masks[-1], streaming)
        for resnet, blocks, sampler in self.up_blocks:
            level_mask = masks.pop()
            skip = skips.pop()
            x = torch.cat([x[:, :, : skip.size(-1)], skip], dim=1)
            x = resnet(x, level_mask, time)
            x = self._attend(x, blocks, level_mask, streaming)
            x = sampler(x * level_mask)
        x = self.final_block(x, level_mask)
        return self.final_proj(x * level_mask) * mask

    def stream(self, x: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor, batch: Packed) -> Tensor:
        """The velocity at the new frames of packed sessions (causal v2 only): ``x``, ``mu``, ``spks``,
        ``cond`` ``[R, 80, total]`` (``spks`` already per frame), ``t`` ``[R]``. Earlier frames enter
        through ``batch``'s carried state, which also says which sessions attend chunk by chunk."""
        if not self.causal:
            raise ValueError("only the causal (v2) U-Net runs incrementally")
        def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return batch.attend(module, q, k, v, self.static_chunk_size)

        time = timestep_embedding(t, self.in_channels)
        time = self.time_mlp.linear_2(F.silu(self.time_mlp.linear_1(time)))
        x = torch.cat([x, mu, spks, cond], dim=1)
        skips = []
        for resnet, blocks, sampler in self.down_blocks:
            x = _transformers(resnet(x, None, time, batch), blocks, attend)
            skips.append(x)
            x = batch.conv(sampler, x)
        for resnet, blocks in self.mid_blocks:
            x = _transformers(resnet(x, None, time, batch), blocks, attend)
        for resnet, blocks, sampler in self.up_blocks:
            x = torch.cat([x, skips.pop()], dim=1)
            x = _transformers(resnet(x, None, time, batch), blocks, attend)
            x = batch.conv(sampler, x)
        return self.final_proj(self.final_block(x, None, batch))


def _transformers(x: Tensor, blocks: nn.ModuleList, attend: Attend) -> Tensor:
    """Transformer blocks over channels-first ``x`` ``[B, C, T]``."""
    h = x.transpose(1, 2)
    for block in blocks:
        h = block(h, attend)
    return h.transpose(1, 2)
