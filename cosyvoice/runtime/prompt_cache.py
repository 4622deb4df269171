"""The flow's state after a voice's prompt, kept for the next streamed session with the same prompt.

A streamed session starts by solving its prompt's whole 25-token chunks (all
that the prompt alone decides, lookahead included). For a saved voice that is
the same work every time: this cache keeps a compact copy of the flow state
after it (keys/values of every solver step and layer: about 4.6 MB per mel
frame for CosyVoice2-0.5B in float32, so ~1.2 GB for a 6 s prompt) and hands
each new session with the same prompt mel, tokens and speaker a fork of it.
Least recently used entries go first when the budget is exceeded. Safe to
use from several render workers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from cosyvoice.model.flow import FlowSession
from cosyvoice.model.pipeline import ModeInputs


class PromptCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[str, FlowSession] = OrderedDict()
        self.hits = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    @staticmethod
    def key(prompt: ModeInputs) -> str:
        digest = hashlib.sha1()
        for tensor in (prompt.flow_speech, prompt.flow_feat, prompt.flow_embedding):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> FlowSession | None:
        with self._lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            self.entries.move_to_end(key)
            self.hits += 1
        return entry.fork()

    def put(self, key: str, session: FlowSession) -> None:
        entry = session.snapshot()
        if entry.nbytes > self.budget:
            return
        with self._lock:
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while self.nbytes > self.budget:
                self.entries.popitem(last=False)
