"""Chunk-by-chunk computation with carried state, for several sessions in one call.

Streaming synthesis hands the v2/v3 flow a session's positions a chunk at a
time. Everything in those estimators is causal or chunk-causal with left
context only, so a chunk depends on earlier positions only through what this
module carries per session: the last inputs of each causal convolution and the
keys/values of each attention layer. Carrying them makes a chunk cost what its
own positions cost, instead of recomputing from the first token as upstream does.

Several sessions run in one call *packed* along time (:class:`Packed`):
pointwise layers and linear maps see one long sequence, while convolutions
and attention look only at each session's own history.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class KVBuffer:
    """Keys and values of one session's earlier positions at one attention layer.

    The buffer grows geometrically, so extending it copies only the new positions
    (most of the time); callers get views of everything so far.
    """

    __slots__ = ("keys", "values", "length")

    def __init__(self, keys: Tensor | None = None, values: Tensor | None = None) -> None:
        """Empty, or holding exactly ``keys``/``values`` (which are then shared until the first extension
        copies them into a larger buffer: extending never writes into tensors it did not allocate)."""
        self.keys = keys
        self.values = values
        self.length = 0 if keys is None else keys.size(2)

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``[R, H, T, d]`` keys/values; return views of all ``length`` positions."""
        end = self.length + keys.size(2)
        if self.keys is None or end > self.keys.size(2):
            capacity = max(end + end // 2, 64)
            grown_k = keys.new_empty(*keys.shape[:2], capacity, keys.size(3))
            grown_v = values.new_empty(*values.shape[:2], capacity, values.size(3))
            if self.keys is not None:
                grown_k[:, :, : self.length] = self.keys[:, :, : self.length]
                grown_v[:, :, : self.length] = self.values[:, :, : self.length]
            self.keys, self.values = grown_k, grown_v
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return 2 * self.keys.numel() * self.keys.element_size()


class SessionState:
    """One session's carried tensors for one model, keyed by call site (module and solver step)."""

    def __init__(self) -> None:
        self.tails: dict[Hashable, Tensor] = {}
        self.kv: dict[Hashable, KVBuffer] = {}

    def snapshot(self) -> SessionState:
        """A compact copy (keys/values cut to their length) that :meth:`fork` can hand out many times."""
        copy = SessionState()
        copy.tails = dict(self.tails)  # tails are replaced, never modified
        for key, buffer in self.kv.items():
            end = buffer.length
            copy.kv[key] = KVBuffer(buffer.keys[:, :, :end].clone(), buffer.values[:, :, :end].clone())
        return copy

    def fork(self) -> SessionState:
        """A new state that starts where this one is, sharing its tensors (see :class:`KVBuffer`)."""
        copy = SessionState()
        copy.tails = dict(self.tails)
        copy.kv = {key: KVBuffer(buffer.keys, buffer.values) for key, buffer in self.kv.items()}
        return copy

    @property
    def nbytes(self) -> int:
        tails = sum(t.numel() * t.element_size() for t in self.tails.values())
        return tails + sum(buffer.nbytes for buffer in self.kv.values())


def _after_tail(x: Tensor, tail: Tensor | None, left: int) -> tuple[Tensor, Tensor]:
    """``x`` ``[R, C, T]`` behind its ``left`` previous inputs (zeros at the start), and the next tail."""
    if tail is None:
        tail = x.new_zeros(x.size(0), x.size(1), left)
    padded = torch.cat([tail, x], dim=2)
    return padded, padded[:, :, padded.size(2) - left :].clone()


def causal_conv(conv: nn.Conv1d, x: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor]:
    """A causal (left-padded) stride-1 conv over one session's new positions ``x`` ``[R, C, T]``, after
    ``tail`` (the inputs before them; None at the start). Returns the output and the next tail."""
    left = (conv.kernel_size[0] - 1) * conv.dilation[0]
    padded, tail = _after_tail(x, tail, left)
    return F.conv1d(padded, conv.weight, conv.bias, dilation=conv.dilation, groups=conv.groups), tail


def chunk_rows(start: int, count: int, chunk: int, device: torch.device) -> Tensor:
    """``[count, start + count]``: which earlier or new positions the new positions ``start ..`` may see.

    Chunk-causal (``chunk`` > 0): up to the end of the query's own chunk, counted
    from position 0, as far as positions exist; ``chunk`` 0: everything so far.
    """
    total = start + count
    keys = torch.arange(total, device=device)
    if chunk <= 0:
        return torch.ones(count, total, dtype=torch.bool, device=device)
    queries = torch.arange(start, total, device=device)
    limit = (queries // chunk + 1) * chunk
    return keys.unsqueeze(0) < limit.unsqueeze(1)


class Packed:
    """One streaming call over several sessions: their states, new lengths and absolute start positions.

    Packed tensors put the sessions' new positions one after another along
    time. ``chunked`` says per session whether attention is chunk-causal (a
    streamed session) or sees everything (a session rendered in one call).
    ``scope`` tells apart the call sites that the same module serves more
    than once per chunk (the flow solver's steps).
    """

    def __init__(
        self,
        states: Sequence[SessionState],
        lengths: Sequence[int],
        starts: Sequence[int],
        chunked: Sequence[bool] | None = None,
        scope: Hashable = None,
    ) -> None:
        chunked = [True] * len(states) if chunked is None else list(chunked)
        if not len(states) == len(lengths) == len(starts) == len(chunked):
            raise ValueError("states, lengths, starts and chunked must match")
        self.states = list(states)
        self.lengths = list(lengths)
        self.starts = list(starts)
        self.chunked = chunked
        self.scope = scope
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]

    def scoped(self, scope: Hashable) -> Packed:
        return Packed(self.states, self.lengths, self.starts, self.chunked, scope)

    def positions(self, device: torch.device) -> Tensor:
        """``[total]``: the absolute position of every packed position."""
        return torch.cat([torch.arange(s, s + n, device=device) for s, n in zip(self.starts, self.lengths)])

    def per_position(self, values: Sequence[Tensor]) -> Tensor:
        """One ``[R, C]`` value per session, repeated over its positions: ``[R, C, total]``."""
        return torch.cat([v.unsqueeze(-1).expand(-1, -1, n) for v, n in zip(values, self.lengths)], dim=2)

    def split(self, x: Tensor, dim: int = -1) -> list[Tensor]:
        return list(x.split(self.lengths, dim=dim))

    def conv(self, conv: nn.Conv1d, x: Tensor) -> Tensor:
        """A causal stride-1 conv over packed ``x`` ``[R, C, total]``, each session after its own tail."""
        left = (conv.kernel_size[0] - 1) * conv.dilation[0]
        if left == 0:
            return F.conv1d(x, conv.weight, conv.bias, groups=conv.groups)
        key = (self.scope, conv)
        pieces, keep = [], []
        for state, part in zip(self.states, self.split(x)):
            padded, state.tails[key] = _after_tail(part, state.tails.get(key), left)
            pieces.append(padded)
        out = F.conv1d(torch.cat(pieces, dim=2), conv.weight, conv.bias, dilation=conv.dilation, groups=conv.groups)
        # output i sees padded inputs i .. i + left: a session's new outputs start where its tail starts
        begin = 0
        for n in self.lengths:
            keep.append(out[:, :, begin : begin + n])
            begin += n + left
        return torch.cat(keep, dim=2)

    def attend(self, module: nn.Module, q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
        """Scaled dot-product attention of packed ``q``/``k``/``v`` ``[R, H, total, d]``: each session's
        new positions see its cached and new keys, within ``chunk``-sized chunks for chunked sessions."""
        key = (self.scope, module)
        outs = []
        spans = zip(self.states, self.starts, self.offsets, self.lengths, self.chunked)
        for state, start, offset, n, chunked in spans:
            buffer = state.kv.setdefault(key, KVBuffer())
            if buffer.length != start:
                raise RuntimeError(f"attention cache holds {buffer.length} positions; the chunk starts at {start}")
            keys, values = buffer.extend(k[:, :, offset : offset + n], v[:, :, offset : offset + n])
            mask = chunk_rows(start, n, chunk if chunked else 0, q.device)
            outs.append(F.scaled_dot_product_attention(q[:, :, offset : offset + n], keys, values, attn_mask=mask))
        return torch.cat(outs, dim=2)
