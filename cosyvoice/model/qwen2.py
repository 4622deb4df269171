"""A Qwen2 decoder stack with explicit, caller-owned key/value caches.

The v2/v3 language models embed a Qwen2-0.5B backbone. Owning the code (not
transformers' model class) keeps the cache a plain per-request value: a step
takes the cache it extends and returns the new one, so the model object holds
no request state and several requests can be stepped side by side. For
continuous batching, :class:`SlotCache` holds many sequences' caches in the
rows of shared tensors and :meth:`Qwen2Model.decode` extends them all by one
token in one pass (:class:`StaticSlotCache`: in fixed shapes, for CUDA graphs).
Keys match ``llm.model.model.*`` in the official ``llm.pt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

KVCache = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0

    @classmethod
    def from_file(cls, path: Path) -> Qwen2Config:
        """Read a Hugging Face ``config.json`` (``rope_theta`` may sit in ``rope_parameters``)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rope = data.get("rope_theta") or (data.get("rope_parameters") or {}).get("rope_theta") or 1_000_000.0
        try:
            return cls(
                vocab_size=data["vocab_size"],
                hidden_size=data["hidden_size"],
                intermediate_size=data["intermediate_size"],
                num_hidden_layers=data["num_hidden_layers"],
                num_attention_heads=data["num_attention_heads"],
                num_key_value_heads=data.get("num_key_value_heads", data["num_attention_heads"]),
                rms_norm_eps=data.get("rms_norm_eps", 1e-6),
                rope_theta=float(rope),
            )
        except KeyError as error:
            raise ValueError(f"{path}: missing key {error.args[0]!r}") from None

    def to_json(self) -> dict:
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "max_position_embeddings": 32768,
            "use_sliding_window": False,
            **self.__dict__,
        }


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of ``q`` ``[B, heads, t, d]`` over fewer key/value heads ``[B, kv_heads, T, d]``
    (query head h uses key head h // (heads / kv_heads)), without copying the keys per query head.
    ``mask`` ``[B or 1, 1, t, T]`` or ``[t, T]``, True where allowed."""
    b, heads, t, d = q.shape
    groups = heads // k.size(1)
    if groups > 1:
        q = q.reshape(b, k.size(1), groups * t, d)
        if mask is not None:
            mask = mask.unsqueeze(-3).expand(*mask.shape[:-2], groups, *mask.shape[-2:]).flatten(-3, -2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.view(b, heads, t, d)


class Attention(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        out = grouped_attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, layer: int, cache: SlotCache) -> Tensor:
        """One new position per row of ``cache`` (rows 0 .. B-1): ``x`` ``[B, 1, H]``, ``cos``/``sin``
        ``[B, 1, 1, d]`` at each row's own position, ``mask`` ``[B, 1, 1, T]``."""
        b = x.size(0)
        q = self.q_proj(x).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys, values = cache.write(layer, k, v, mask.size(-1))
        out = grouped_attention(q, keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, 1, -1))


class MLP(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        attended, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), cache

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, layer: int, cache: SlotCache) -> Tensor:
        x = x + self.self_attn.decode(self.input_layernorm(x), cos, sin, mask, layer, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """Token embeddings, decoder layers and the final norm (``llm.model.model``)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = config.hidden_size // config.num_attention_heads
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta**exponents), persistent=False)

    def _rotation(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = positions.float().unsqueeze(-1) * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, embeds: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Extend ``cache`` (None: empty) by ``embeds`` ``[B, T, H]``; the normed hidden states and the new cache."""
        past = 0 if cache is None else cache[0][0].size(2)
        t = embeds.size(1)
        cos, sin = self._rotation(torch.arange(past, past + t, device=embeds.device), embeds.dtype)
        mask = None
        if t > 1:
            query = torch.arange(past, past + t, device=embeds.device).unsqueeze(1)
            mask = torch.arange(past + t, device=embeds.device).unsqueeze(0) <= query
        x = embeds
        new_cache: KVCache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, mask, None if cache is None else cache[i])
            new_cache.append(layer_cache)
        return self.norm(x), new_cache

    def decode(self, embeds: Tensor, cache: SlotCache) -> Tensor:
        """Extend each of the first ``B`` rows of ``cache`` by one position: ``embeds`` ``[B, 1, H]`` ->
        normed hidden states ``[B, 1, H]``."""
        b = embeds.size(0)
        positions, end = cache.positions(b)
        cos, sin = self._rotation(positions.view(b, 1, 1), embeds.dtype)  # [B, 1, 1, d]: any head, one position
        mask = (torch.arange(end, device=embeds.device) <= positions.unsqueeze(1)).view(b, 1, 1, end)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer.decode(x, cos, sin, mask, i, cache)
        cache.advance(b)
        return self.norm(x)


class SlotCache:
    """Keys/values of several sequences in the rows of shared ``[rows, kv_heads, positions, d]`` tensors.

    Rows ``0 .. active - 1`` are in use, so a decode step works on views of the
    first rows; :meth:`remove` moves the last row into the freed one. Rows and
    positions grow geometrically as sequences join and lengthen.
    """

    def __init__(self, config: Qwen2Config, device: torch.device, dtype: torch.dtype) -> None:
        self.shape = (config.num_key_value_heads, config.hidden_size // config.num_attention_heads)
        self.layers_count = config.num_hidden_layers
        self.device, self.dtype = device, dtype
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)
        self.active = 0
        self._allocate(4, 256)

    def _allocate(self, rows: int, positions: int) -> None:
        kv_heads, head_dim = self.shape

        def grow(old: Tensor | None) -> Tensor:
            new = torch.zeros(rows, kv_heads, positions, head_dim, device=self.device, dtype=self.dtype)
            if old is not None:
                new[: old.size(0), :, : old.size(2)] = old
            return new

        old_k = self.keys or [None] * self.layers_count
        old_v = self.values or [None] * self.layers_count
        self.keys = [grow(k) for k in old_k]
        self.values = [grow(v) for v in old_v]
        lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        lengths[: self.lengths.numel()] = self.lengths
        self.lengths = lengths

    @property
    def capacity(self) -> tuple[int, int]:
        return self.keys[0].size(0), self.keys[0].size(2)

    def reserve(self, positions: int, rows: int = 0) -> None:
        """Make room for ``rows`` rows of ``positions`` positions (at least doubling what is short)."""
        have_rows, have_positions = self.capacity
        if positions > have_positions or rows > have_rows:
            self._allocate(
                have_rows if rows <= have_rows else max(rows, 2 * have_rows),
                have_positions if positions <= have_positions else max(positions, 2 * have_positions),
            )

    def add(self, cache: KVCache, room: int) -> int:
        """Take a sequence's prefill cache (``[1, kv_heads, T, d]`` per layer) into a new last row;
        ``room``: the most positions it may still add (this cache grows when they come)."""
        del room
        row, length = self.active, cache[0][0].size(2)
        self.reserve(length, row + 1)
        self._copy_in(row, cache)
        self.lengths[row] = length
        self.active += 1
        return row

    def _copy_in(self, row: int, cache: KVCache) -> None:
        length = cache[0][0].size(2)
        for i, (k, v) in enumerate(cache):
            self.keys[i][row, :, :length] = k[0]
            self.values[i][row, :, :length] = v[0]

    def _length(self, row: int) -> int:
        return int(self.lengths[row])

    def stage(self, ids: list[int]) -> Tensor:
        """The step's input token ids on the device, one per row."""
        return torch.tensor(ids, device=self.device)

    def positions(self, b: int) -> tuple[Tensor, int]:
        """Each of rows 0 .. b-1's new position ``[b]``, and how many positions the step attends over
        (the longest row's, the new one included; reading it waits for the device)."""
        end = int(self.lengths[:b].max()) + 1
        self.reserve(end)
        return self.lengths[:b], end

    def advance(self, b: int) -> None:
        self.lengths[:b] += 1

    def remove(self, row: int) -> int | None:
        """Free ``row``; the last row moves into it (returns that row's old index, None if none moved)."""
        last = self.active - 1
        self.active = last
        if row == last:
            return None
        length = self._length(last)
        for keys, values in zip(self.keys, self.values):
            keys[row, :, :length] = keys[last, :, :length]
            values[row, :, :length] = values[last, :, :length]
        self.lengths[row] = length
        return last

    def write(self, layer: int, k: Tensor, v: Tensor, end: int) -> tuple[Tensor, Tensor]:
        """Store one new position per row (``[B, kv_heads, 1, d]`` at each row's length); views of
        rows 0 .. B-1 up to position ``end`` (the longest row's, new position included)."""
        b = k.size(0)
        rows = torch.arange(b, device=k.device)
        positions = self.lengths[:b]
        self.keys[layer][rows, :, positions] = k[:, :, 0]
        self.values[layer][rows, :, positions] = v[:, :, 0]
        return self.keys[layer][:b, :, :end], self.values[layer][:b, :, :end]


DECODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes a fixed-shape step pads to; past 64, whole 64s
SPAN_STEP = 256  # a fixed-shape step attends over a whole number of these: few shapes, < 256 masked positions


def bucket(n: int) -> int:
    """The smallest decode bucket holding ``n`` rows."""
    for size in DECODE_BUCKETS:
        if n <= size:
            return size
    top = DECODE_BUCKETS[-1]
    return -(-n // top) * top


class StaticSlotCache(SlotCache):
    """A slot cache whose decode step has fixed shapes, so that a GPU could capture each
    (bucket, span) step once in a graph and replay it.

    A step runs on :func:`bucket` rows (padding rows read token 0 at position 0 of their
    own row and are discarded), attends over a whole number of ``SPAN_STEP`` positions,
    and allocates nothing: a sequence's row and all the positions it may reach are
    allocated when it joins. Lengths are kept on the host, so a step reads nothing back
    from the device; its token ids and positions go over in one copy per step (from
    page-locked memory on CUDA, where that copy is then asynchronous).
    """

    def __init__(self, config: Qwen2Config, device: torch.device, dtype: torch.dtype) -> None:
        self.host: list[int] = []  # rows 0 .. active-1's lengths; ``lengths`` is only the step's input
        super().__init__(config, device, dtype)
        self.span = SPAN_STEP

    def _allocate(self, rows: int, positions: int) -> None:
        super()._allocate(rows, positions)
        pinned = self.device.type == "cuda"  # page-locked staging is a CUDA matter; a CPU copies in place
        self.staging = torch.zeros(2, rows, dtype=torch.long, pin_memory=pinned)  # token ids, positions
        self.ids = torch.zeros(rows, dtype=torch.long, device=self.device)

    def add(self, cache: KVCache, room: int) -> int:
        """Take a sequence's prefill cache into a new last row, with room for ``room`` more positions."""
        row, length = self.active, cache[0][0].size(2)
        have_rows, have_positions = self.capacity
        needed = -(-(length + room + 1) // SPAN_STEP) * SPAN_STEP
        if bucket(row + 1) > have_rows or needed > have_positions:
            self._allocate(max(have_rows, bucket(row + 1)), max(have_positions, needed))
        self._copy_in(row, cache)
        self.host.append(length)
        self.active += 1
        return row

    def remove(self, row: int) -> int | None:
        moved = super().remove(row)
        self.host[row] = self.host[-1]
        self.host.pop()
        return moved

    def _length(self, row: int) -> int:
        return self.host[row]

    def stage(self, ids: list[int]) -> Tensor:
        """The step's token ids padded to the bucket (the positions go over with them)."""
        b, n = bucket(len(ids)), len(ids)
        # Safe to overwrite: the previous step's copy has completed, since its log-probabilities were read.
        staged = self.staging[:, :b].numpy()
        staged[:, n:] = 0
        staged[0, :n] = ids
        staged[1, :n] = self.host
        longest = max(self.host) + 1
        self.span = min(-(-longest // SPAN_STEP) * SPAN_STEP, self.capacity[1])
        self.ids[:b].copy_(self.staging[0, :b], non_blocking=True)
        self.lengths[:b].copy_(self.staging[1, :b], non_blocking=True)
        return self.ids[:b]

    def positions(self, b: int) -> tuple[Tensor, int]:
        return self.lengths[:b], self.span

    def advance(self, b: int) -> None:
        self.host = [length + 1 for length in self.host]


class Qwen2Backbone(nn.Module):
    """``llm.model``: holds the decoder as ``model``; the official ``lm_head`` is checked, never used."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2Model(config)


class Qwen2Encoder(nn.Module):
    """``llm``: the wrapper level of the official key names."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2Backbone(config)

    @property
    def decoder(self) -> Qwen2Model:
        return self.model.model
