"""A Qwen2 decoder stack with explicit, caller-owned key/value caches.

The v2/v3 language models embed a Qwen2-0.5B backbone. Owning the code (not
transformers' model class) keeps the cache a plain per-request value: a step
takes the cache it extends and returns the new one, so the model object holds
no request state and several requests can be stepped side by side. Keys match
``llm.model.model.*`` in the official ``llm.pt``.
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
        groups = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), attn_mask=mask
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


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

    def forward(self, embeds: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Extend ``cache`` (None: empty) by ``embeds`` ``[B, T, H]``; the normed hidden states and the new cache."""
        past = 0 if cache is None else cache[0][0].size(2)
        t = embeds.size(1)
        positions = torch.arange(past, past + t, device=embeds.device, dtype=torch.float32)
        freqs = positions.unsqueeze(1) * self.inv_freq.unsqueeze(0)
        angles = torch.cat([freqs, freqs], dim=-1)
        cos, sin = angles.cos().to(embeds.dtype), angles.sin().to(embeds.dtype)
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
