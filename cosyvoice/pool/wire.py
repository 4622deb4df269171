"""What crosses the wire between an edge and a replica: one clause out, a header then pieces back."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from cosyvoice.engine import SavedVoice, SpeechParams, SynthesisRequest
from cosyvoice.timing import WordTiming


# This process, as the replicas' reports name it: a router counts its own clauses fresh and the others' as reported.
EDGE = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ClauseJob:
    """One clause to speak, with everything a replica needs and nothing bound to the edge's process."""

    text: str
    params: SpeechParams
    saved_voice: SavedVoice | None = None

    @classmethod
    def of(cls, text: str, request: SynthesisRequest) -> ClauseJob:
        saved = request.saved_voice
        # The registry's persistence hook belongs to the edge's process; a replica computes features for itself.
        portable = None if saved is None else replace(saved, store_features=None, features=dict(saved.features))
        return cls(text=text, params=request, saved_voice=portable)

    def request(self) -> SynthesisRequest:
        return SynthesisRequest.of(self.text, self.params, saved_voice=self.saved_voice)

    @property
    def voice_key(self) -> str:
        """The saved voice whose prompt features a replica may hold; empty for a built-in one (every replica has it)."""
        return "" if self.saved_voice is None else self.saved_voice.id


@dataclass(frozen=True)
class Header:
    """The first item of every replica stream: who serves it, so the utterance's next clause can follow."""

    replica: str


@dataclass(frozen=True, eq=False)
class Piece:
    """A chunk of a clause's audio and the word timings (clause-relative) that came with it."""

    samples: np.ndarray
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True)
class ReplicaLoad:
    """A replica's demand signals, reported to routers (``record_routing_stats``) and to tests."""

    replica: str = ""
    streams: int = 0  # clauses being spoken now
    awaiting_first_audio: int = 0  # of those, the ones with no audio yet: the queue a new clause joins
    voices: tuple[str, ...] = field(default=())  # saved voices whose prompt features it holds, most recent last
    awaiting_by_edge: Mapping[str, int] = field(default_factory=dict)  # awaiting_first_audio by the edge that sent it
    served: int = 0
    cancelled: int = 0  # streams the edge cancelled before their end
    busy: int = 0  # the engine's own work in progress (busy workers, or sessions in its batch)

    def as_stats(self) -> dict:
        return {
            "streams": self.streams, "awaiting_first_audio": self.awaiting_first_audio, "voices": list(self.voices),
            "awaiting_by_edge": dict(self.awaiting_by_edge),
        }  # fmt: skip
