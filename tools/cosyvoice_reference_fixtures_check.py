"""The weight fingerprint the parity fixtures record (shared by the fixture script and the tests)."""

from __future__ import annotations

from pathlib import Path

import torch


def fingerprint(model_dir: Path) -> dict[str, float]:
    """Sum of |w| over each checkpoint: cheap, and any change of the generator shows."""
    prints = {}
    for key in ("llm", "flow", "hift"):
        state = torch.load(Path(model_dir) / f"{key}.pt", map_location="cpu", weights_only=True)
        prints[key] = float(sum(v.double().abs().sum() for v in state.values() if v.is_floating_point()))
    return prints
