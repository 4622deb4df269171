"""One clause (or one voice-conversion source) in flight, shared by the scheduler's two workers.

The language-model worker appends speech tokens; the render worker turns them
into audio chunks and hands each to ``deliver`` (which must be safe to call
from any thread). A session's urgency is its *deadline*: the moment its
listener runs out of audio, if playback started with the first chunk; a
session without audio yet is already due, since it was created.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosyvoice.model.pipeline import ModeInputs

SILENT_TOKENS_V3 = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
MAX_SILENT_RUN = 5


class Marker:
    """A non-audio item for ``deliver``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


LLM_DONE = Marker("llm done")  # every speech token is known: a next clause can start its LLM
END = Marker("end")  # the last chunk has been delivered


@dataclass(eq=False)
class TextFeed:
    """Text token ids for a text-fed session, arriving while it decodes: the event loop appends pieces
    and closes it, the token worker takes them (a deque is safe for one appender and one taker)."""

    head: int = 0  # leading prompt-text tokens that precede the text blocks (v3: through <|endofprompt|>)
    pieces: deque[Tensor] = field(default_factory=deque)
    closed: bool = False

    @property
    def pending(self) -> bool:
        """Something for the token worker: a piece, or the close."""
        return bool(self.pieces) or self.closed


@dataclass(eq=False)
class Session:
    prompt: ModeInputs
    text: Tensor | None  # text token ids; None for voice conversion and text-fed sessions
    deliver: Callable[[np.ndarray | Marker | BaseException], None]
    stream: bool = True
    speed: float = 1.0
    seed: int | None = None  # the LLM's sampling stream; also seeds ``generator``
    generation: int = 2
    tokens: list[int] = field(default_factory=list)  # speech tokens to render
    llm_done: bool = False
    cancelled: bool = False
    created: float = field(default_factory=time.monotonic)
    first_audio: float | None = None
    audio_seconds: float = 0.0
    render: Any = None  # the renderer's per-session state
    silent_run: int = 0
    feed: TextFeed | None = None  # text-fed (v2/v3): the text arrives while it decodes

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed) if self.seed else None

    @property
    def deadline(self) -> float:
        """When the listener runs out of audio (monotonic seconds)."""
        return self.created if self.first_audio is None else self.first_audio + self.audio_seconds

    def accept(self, token: int) -> None:
        """A new speech token from the LLM; v3 drops silence tokens after a run of 5 (the LLM saw them)."""
        if self.generation == 3:
            self.silent_run = self.silent_run + 1 if token in SILENT_TOKENS_V3 else 0
            if self.silent_run > MAX_SILENT_RUN:
                return
        self.tokens.append(token)

    def emit(self, chunk: np.ndarray, sample_rate: int) -> None:
        if chunk.size == 0:
            return
        if self.first_audio is None:
            self.first_audio = time.monotonic()
        self.audio_seconds += chunk.size / sample_rate
        self.deliver(chunk.astype(np.float32, copy=False))
