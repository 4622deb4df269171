"""Strict checkpoint loading: every key consumed, every shape right, or a message naming both.

The official ``.pt`` files are plain state dicts. Weight-normed layers come
in two key forms, the legacy ``weight_g``/``weight_v`` and the newer
``parametrizations.weight.original0``/``original1``; both are folded into a
plain ``weight`` (g * v / |v|, the norm over every dim but the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

_FORMS = ((".weight_g", ".weight_v"), (".parametrizations.weight.original0", ".parametrizations.weight.original1"))


class CheckpointError(ValueError):
    """A checkpoint file does not match the model its config describes."""


def read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        # mmap: tensors are paged in from the file as they are copied, not held twice
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: cannot be read as a state dict: {error}") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def fold_weight_norm(state: dict[str, Tensor], path: Path, origins: dict[str, str] | None = None) -> dict[str, Tensor]:
    """Replace each (g, v) pair by the weight it stands for; ``origins`` learns which file key each came from."""
    folded: dict[str, Tensor] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in _FORMS:
            if key.endswith(v_suffix):
                break
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                v = state.get(base + v_suffix)
                if v is None:
                    raise CheckpointError(f"{path}: '{key}' has no matching '{base + v_suffix}'")
                if value.numel() != v.size(0):
                    raise CheckpointError(
                        f"{path}: '{key}' has shape {list(value.shape)}, expected [{v.size(0)}, 1, ...] for '{base + v_suffix}'"
                    )
                dims = list(range(1, v.dim()))
                norm = v.norm(dim=dims, keepdim=True) if dims else v.abs()
                folded[base + ".weight"] = value.reshape(norm.shape) * v / norm
                if origins is not None:
                    origins[base + ".weight"] = base + v_suffix
                break
        else:
            folded[key] = value
    return folded


def unfold_weight_norm(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(g, v) for ``weight`` such that folding gives it back; what a weight-normed layer stores."""
    dims = list(range(1, weight.dim()))
    g = weight.norm(dim=dims, keepdim=True)
    return g, weight.clone()


def load_strict(module: nn.Module, path: Path, *, unused: Mapping[str, tuple[int, ...]] = (), strip: str = "") -> None:
    """Load ``path`` into ``module``; keys in ``unused`` must be present with that shape but are dropped."""
    state = read_state(path)
    if strip:
        state = {k[len(strip) :] if k.startswith(strip) else k: v for k, v in state.items()}
    origins: dict[str, str] = {}
    state = fold_weight_norm(state, path, origins)
    expected = module.state_dict()
    unused = dict(unused)
    for key, value in state.items():
        shape = unused.get(key, expected[key].shape if key in expected else None)
        if shape is None:
            raise CheckpointError(f"{path}: unexpected key '{key}' (shape {list(value.shape)}): not part of this model")
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: key '{origins.get(key, key)}' has shape {list(value.shape)}, the config expects {list(shape)}"
            )
    for key in list(expected) + list(unused):
        if key not in state:
            raise CheckpointError(f"{path}: missing key '{key}'")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
