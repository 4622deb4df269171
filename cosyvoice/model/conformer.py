"""ESPnet/WeNet-style encoders: relative-position self-attention stacks.

Used by the v1 language model (text encoder and decoder stack), the v1 flow
encoder and the v2 flow's upsampling encoder. Keys follow the official
checkpoints (``embed.out.0``, ``encoders.N.self_attn.linear_q``, ...).
Masks are boolean ``[B, Tq, Tk]`` tensors, True where attention is allowed.
The v2 flow's encoder also runs a chunk at a time (:meth:`UpsampleEncoder.stream`),
carrying keys/values and convolution inputs in an :class:`EncoderCache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.incremental import causal_conv, chunk_rows

KVCache = tuple[Tensor, Tensor]


def chunk_mask(size: int, chunk: int, device: torch.device | None = None) -> Tensor:
    """``[size, size]``: position i sees every position up to the end of its own chunk."""
    index = torch.arange(size, device=device)
    limit = (index // chunk + 1) * chunk
    return index.unsqueeze(0) < limit.unsqueeze(1)


def attention_mask(lengths: Tensor, size: int, chunk: int = 0) -> Tensor:
    """``[B, size, size]`` from the valid lengths, chunk-causal when ``chunk`` > 0."""
    valid = torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    mask = valid.unsqueeze(1).expand(-1, size, -1)
    if chunk > 0:
        mask = mask & chunk_mask(size, chunk, lengths.device).unsqueeze(0)
    return mask


class RelPositionalEncoding(nn.Module):
    """Scales inputs by sqrt(d) and yields sinusoids for relative offsets +(T-1) ... -(T-1)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.xscale = math.sqrt(size)

    def relative(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        offsets = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
        rate = torch.exp(
            torch.arange(0, self.size, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / self.size)
        )
        table = torch.zeros(2 * length - 1, self.size, device=device)
        table[:, 0::2] = torch.sin(offsets * rate)
        table[:, 1::2] = torch.cos(offsets * rate)
        return table.unsqueeze(0).to(dtype)


class LinearEmbed(nn.Module):
    """``embed.out``: Linear and LayerNorm (then ReLU in the legacy variant), then the sqrt(d) scale."""

    def __init__(self, in_size: int, out_size: int, *, legacy: bool = False) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_size, out_size), nn.LayerNorm(out_size, eps=1e-5))
        self.legacy = legacy
        self.pos = RelPositionalEncoding(out_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.out(x)
        if self.legacy:
            x = F.relu(x)
        return x * self.pos.xscale


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (``rel_selfattn``)."""

    def __init__(self, heads: int, size: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_k = size // heads
        self.linear_q = nn.Linear(size, size)
        self.linear_k = nn.Linear(size, size)
        self.linear_v = nn.Linear(size, size)
        self.linear_out = nn.Linear(size, size)
        self.linear_pos = nn.Linear(size, size, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: Tensor, mask: Tensor, pos: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.heads, self.d_k)
        k = self.linear_k(x).view(b, t, self.heads, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.heads, self.d_k).transpose(1, 2)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        keys = k.size(2)
        p = self.linear_pos(pos).view(1, -1, self.heads, self.d_k).transpose(1, 2)
        content = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)
        position = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)
        # Query i sits at absolute position keys - t + i; the table row for
        # relative offset (query - key) is at index t - 1 - i + j.
        index = (t - 1 - torch.arange(t, device=x.device)).unsqueeze(1) + torch.arange(keys, device=x.device)
        position = position.gather(-1, index.expand(b, self.heads, t, keys))
        scores = (content + position) / math.sqrt(self.d_k)
        blocked = ~mask.unsqueeze(1)
        weights = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1).masked_fill(blocked, 0.0)
        out = (weights @ v).transpose(1, 2).reshape(b, t, self.heads * self.d_k)
        return self.linear_out(out), (k, v)


class FeedForward(nn.Module):
    def __init__(self, size: int, units: int, activation: nn.Module) -> None:
        super().__init__()
        self.w_1 = nn.Linear(size, units)
        self.w_2 = nn.Linear(units, size)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm attention then feed-forward; conformer and transformer layers differ only in key names."""

    def __init__(self, size: int, heads: int, units: int, *, conformer: bool) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, size)
        self.feed_forward = FeedForward(size, units, nn.SiLU() if conformer else nn.ReLU())
        first, second = ("norm_mha", "norm_ff") if conformer else ("norm1", "norm2")
        self._norms = (first, second)
        setattr(self, first, nn.LayerNorm(size, eps=1e-12))
        setattr(self, second, nn.LayerNorm(size, eps=1e-12))

    def forward(self, x: Tensor, mask: Tensor, pos: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        norm_attn, norm_ff = (getattr(self, name) for name in self._norms)
        attended, cache = self.self_attn(norm_attn(x), mask, pos, cache)
        x = x + attended
        return x + self.feed_forward(norm_ff(x)), cache


class Encoder(nn.Module):
    """Embedding, a stack of layers and ``after_norm`` (ConformerEncoder / TransformerEncoder)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        heads: int,
        units: int,
        blocks: int,
        *,
        conformer: bool = True,
        legacy_embed: bool = False,
        static_chunk_size: int = 0,
    ) -> None:
        super().__init__()
        self.static_chunk_size = static_chunk_size
        self.embed = LinearEmbed(input_size, output_size, legacy=legacy_embed)
        self.encoders = nn.ModuleList(
            EncoderLayer(output_size, heads, units, conformer=conformer) for _ in range(blocks)
        )
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(x)
        mask = attention_mask(lengths, x.size(1), self.static_chunk_size)
        pos = self.embed.pos.relative(x.size(1), x.device, x.dtype)
        for layer in self.encoders:
            x, _ = layer(x, mask, pos)
        return self.after_norm(x)

    def forward_cached(
        self, x: Tensor, mask: Tensor, caches: list[KVCache] | None
    ) -> tuple[Tensor, list[KVCache]]:
        """Run new positions after ``caches`` (the keys/values of earlier ones); ``mask`` is ``[B, T, T_cache + T]``."""
        x = self.embed(x)
        keys = mask.size(-1)
        pos = self.embed.pos.relative(keys, x.device, x.dtype)
        new_caches = []
        for i, layer in enumerate(self.encoders):
            x, cache = layer(x, mask, pos, None if caches is None else caches[i])
            new_caches.append(cache)
        return self.after_norm(x), new_caches


class PreLookaheadLayer(nn.Module):
    """Mixes each position with the next ``lookahead`` ones (zeros or real context at the end), residually."""

    def __init__(self, channels: int, hidden: int, lookahead: int = 3) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, hidden, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(hidden, channels, kernel_size=3)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x`` ``[B, T, C]``; ``context`` ``[B, lookahead, C]`` are the real positions after ``x``, if known."""
        return self.stream(x, context, None)[0]

    def stream(self, x: Tensor, context: Tensor | None, tail: Tensor | None) -> tuple[Tensor, Tensor]:
        """As :meth:`forward` for new positions ``x`` after those whose ``conv2`` inputs end in ``tail``
        (None: the start); also returns the next tail."""
        h = x.transpose(1, 2)
        if context is None or context.size(1) == 0:
            h = F.pad(h, (0, self.lookahead))
        else:
            h = torch.cat([h, context.transpose(1, 2)], dim=2)
        h, tail = causal_conv(self.conv2, F.leaky_relu(self.conv1(h)), tail)
        return h.transpose(1, 2) + x, tail


class UpsampleConv(nn.Module):
    """Nearest-neighbour x``stride`` then a causal conv (``up_layer``)."""

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, kernel_size=stride * 2 + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.stream(x, None)[0]

    def stream(self, x: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C, T]`` new positions after the upsampled inputs ending in ``tail`` (None: the start)."""
        return causal_conv(self.conv, F.interpolate(x, scale_factor=self.stride, mode="nearest"), tail)


@dataclass
class EncoderCache:
    """What :meth:`UpsampleEncoder.stream` carries for one session: input positions so far, the
    lookahead and upsampling convs' last inputs, and every layer's keys/values."""

    positions: int = 0
    lookahead_tail: Tensor | None = None
    up_tail: Tensor | None = None
    kv: list[KVCache | None] = field(default_factory=list)


class UpsampleEncoder(nn.Module):
    """The v2 flow encoder: conformer, 2x upsampling, conformer again; chunk-causal when streaming."""

    def __init__(
        self, size: int, heads: int, units: int, blocks: int, *, up_blocks: int = 4, static_chunk_size: int = 25
    ) -> None:
        super().__init__()
        self.static_chunk_size = static_chunk_size
        self.embed = LinearEmbed(size, size)
        self.pre_lookahead_layer = PreLookaheadLayer(size, size)
        self.encoders = nn.ModuleList(EncoderLayer(size, heads, units, conformer=True) for _ in range(blocks))
        self.up_layer = UpsampleConv(size, 2)
        self.up_embed = LinearEmbed(size, size)
        self.up_encoders = nn.ModuleList(EncoderLayer(size, heads, units, conformer=True) for _ in range(up_blocks))
        self.after_norm = nn.LayerNorm(size, eps=1e-5)

    @property
    def lookahead(self) -> int:
        return self.pre_lookahead_layer.lookahead

    def forward(self, x: Tensor, lengths: Tensor, *, streaming: bool, context: Tensor | None = None) -> Tensor:
        """``x`` ``[B, T, C]`` embedded tokens -> ``[B, 2T, C]``; ``context`` are lookahead tokens beyond ``x``."""
        x = self.embed(x)
        if context is not None and context.size(1) > 0:
            context = self.embed(context)
        chunk = self.static_chunk_size if streaming else 0
        mask = attention_mask(lengths, x.size(1), chunk)
        pos = self.embed.pos.relative(x.size(1), x.device, x.dtype)
        x = self.pre_lookahead_layer(x, context)
        for layer in self.encoders:
            x, _ = layer(x, mask, pos)
        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        lengths = lengths * self.up_layer.stride
        x = self.up_embed(x)
        mask = attention_mask(lengths, x.size(1), chunk * self.up_layer.stride)
        pos = self.up_embed.pos.relative(x.size(1), x.device, x.dtype)
        for layer in self.up_encoders:
            x, _ = layer(x, mask, pos)
        return self.after_norm(x)

    def stream(self, x: Tensor, context: Tensor | None, cache: EncoderCache, *, streaming: bool) -> Tensor:
        """:meth:`forward` for one session's new positions ``x`` ``[1, T, C]`` after those in ``cache``
        (which it extends). With ``streaming`` the chunk masks apply, and a chunk must end on a chunk
        boundary unless it is the last; without, there must be one call only."""
        if not cache.kv:
            cache.kv = [None] * (len(self.encoders) + len(self.up_encoders))
        start, count = cache.positions, x.size(1)
        x = self.embed(x)
        if context is not None and context.size(1) > 0:
            context = self.embed(context)
        x, cache.lookahead_tail = self.pre_lookahead_layer.stream(x, context, cache.lookahead_tail)
        chunk = self.static_chunk_size if streaming else 0
        layers = list(self.encoders)
        x = self._layers(x, layers, cache, 0, start, chunk, self.embed.pos)
        x, cache.up_tail = self.up_layer.stream(x.transpose(1, 2), cache.up_tail)
        stride = self.up_layer.stride
        x = self._layers(self.up_embed(x.transpose(1, 2)), list(self.up_encoders), cache, len(layers),
                         start * stride, chunk * stride, self.up_embed.pos)
        cache.positions = start + count
        return self.after_norm(x)

    @staticmethod
    def _layers(
        x: Tensor, layers: list[EncoderLayer], cache: EncoderCache, first: int, start: int, chunk: int,
        pos: RelPositionalEncoding,
    ) -> Tensor:
        mask = chunk_rows(start, x.size(1), chunk, x.device).unsqueeze(0)
        table = pos.relative(mask.size(-1), x.device, x.dtype)
        for i, layer in enumerate(layers, start=first):
            x, cache.kv[i] = layer(x, mask, table, cache.kv[i])
        return x
