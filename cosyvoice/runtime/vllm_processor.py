"""The vLLM logits processor for CosyVoice requests (imported by vLLM's engine; needs vllm).

A thin adapter: the work is :class:`~cosyvoice.runtime.ras.RasRows`, which
reads the model's sampling settings and head bias from the exported model
directory vLLM was started on.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from cosyvoice.runtime.ras import RasConfig, RasRows


class RasLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        config, bias = RasConfig.load(vllm_config.model_config.model)
        self.rows = RasRows(config, bias, device)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the distribution, not only its scale

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.rows.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.rows.apply(logits)
