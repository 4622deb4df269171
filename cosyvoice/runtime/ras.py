"""Repetition-aware sampling for vLLM's batch rows, free of vLLM: shared by the stage and its logits processor.

:mod:`cosyvoice.runtime.vllm` writes the files :class:`RasConfig` reads beside
its export and tags its requests with :data:`MIN_LEN_ARG`;
:mod:`cosyvoice.runtime.vllm_processor`, which vLLM's engine imports, wraps
:class:`RasRows`. Neither of those two imports the other's module at load time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cosyvoice.model.sampling import SamplingOptions, ras_distribution

MIN_LEN_ARG = "cosyvoice_min_len"  # SamplingParams.extra_args key: the request's minimum length
SAMPLING_FILE = "cosyvoice_sampling.json"
BIAS_FILE = "cosyvoice_head_bias.safetensors"


@dataclass(frozen=True)
class RasConfig:
    """What the logits processor needs to know about the model, stored beside the export."""

    speech_token_size: int
    options: SamplingOptions

    @classmethod
    def load(cls, directory: str | Path) -> tuple[RasConfig, Tensor | None]:
        """The config and the head's bias (None for v3) of an export."""
        from safetensors.torch import load_file

        data = json.loads((Path(directory) / SAMPLING_FILE).read_text(encoding="utf-8"))
        bias_file = Path(directory) / BIAS_FILE
        bias = load_file(str(bias_file))["bias"] if bias_file.exists() else None
        return cls(data["speech_token_size"], SamplingOptions(**data["options"])), bias


class RasRows:
    """The logits processor's work, free of vLLM: which batch rows are our requests (their minimum length
    and their live list of generated tokens, from vLLM's batch updates) and their distribution."""

    def __init__(self, config: RasConfig, bias: Tensor | None, device: torch.device) -> None:
        self.config = config
        self.bias = None if bias is None else bias.to(device)
        self.rows: dict[int, tuple[int, list[int]]] = {}

    def update(self, batch_update) -> None:
        """Apply a vLLM ``BatchUpdate`` (removed, then added, then moved) to the row table."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _, output in batch_update.added:
            extra = params.extra_args or {}
            if MIN_LEN_ARG in extra:
                self.rows[index] = (int(extra[MIN_LEN_ARG]), output)
            else:
                self.rows.pop(index, None)
        for first, second, direction in batch_update.moved:
            a, b = self.rows.pop(first, None), self.rows.pop(second, None)
            if a is not None:
                self.rows[second] = a
            if b is not None and direction.name == "SWAP":
                self.rows[first] = b

    def apply(self, logits: Tensor) -> Tensor:
        """Replace our rows of ``logits`` ``[rows, V]`` by the log of the distribution to draw from."""
        if not self.rows:
            return logits
        index = sorted(self.rows)
        scores = logits[index].float()
        if self.bias is not None:
            scores = scores + self.bias
        logp = scores.log_softmax(dim=-1)
        barred = torch.tensor([len(self.rows[i][1]) < self.rows[i][0] for i in index], device=logits.device)
        logp[:, self.config.speech_token_size :] = logp[:, self.config.speech_token_size :].masked_fill(
            barred.unsqueeze(1), float("-inf")
        )
        probs = ras_distribution(logp, [self.rows[i][1] for i in index], self.config.options)
        logits[index] = probs.log().to(logits.dtype)
        return logits
