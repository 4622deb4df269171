"""What a phone carrier's media stream says, as typed values, and the contract of its serializer.

A carrier (Twilio, Asterisk's AudioSocket, ...) streams a call as messages:
a start that names the call, caller audio, DTMF, marks it echoes once the
audio before them has played, a stop. A serializer decodes each message into
one of the values below and encodes our audio, marks and clears into its
messages; the socket loop (:mod:`signaling.carrier`) never sees the dialect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

Message = str | bytes  # a WebSocket text or binary message, or one whole frame of a stream protocol


class Malformed(ValueError):
    """A message that cannot be read: it costs the far end that message, not the call."""


class Undecodable(ValueError):
    """Caller audio whose payload cannot be decoded: that audio is skipped, the call goes on."""


class ProtocolViolation(ValueError):
    """A message that breaks the protocol beyond recovery: the call ends with an error."""


@dataclass(frozen=True)
class Start:
    """The call begins. ``sample_rate`` None: learn it from the caller's first audio."""

    call_id: str
    stream_id: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    sample_rate: int | None = None


@dataclass(frozen=True)
class Media:
    """Caller audio, still encoded: sized before it is decoded, so a flood costs no decoding."""

    payload: Message
    seconds: float
    sample_rate: int


@dataclass(frozen=True)
class Mark:
    """The far end played everything sent before the mark of this name."""

    name: str


@dataclass(frozen=True)
class Dtmf:
    digit: str | None


@dataclass(frozen=True)
class Stop:
    """The far end ends the call."""


@dataclass(frozen=True)
class Problem:
    """Something the session's watchers should hear about (an error event); the call goes on."""

    message: str


Inbound = Start | Media | Mark | Dtmf | Stop | Problem


class CarrierSerializer(ABC):
    """One carrier's dialect. Stateful where the dialect is: outbound messages may name the stream."""

    name: str  # as the carrier spells itself, for messages
    echoes_marks = False  # True: marks go out with the audio and count as played when they come back

    @abstractmethod
    def decode(self, message: Message) -> Inbound | None:
        """The typed value of one message; None for messages that mean nothing to a session.

        Raises :class:`Malformed`, :class:`Undecodable` or :class:`ProtocolViolation`."""

    @abstractmethod
    def decode_audio(self, media: Media) -> np.ndarray:
        """Caller audio as float32 samples in [-1, 1); raises :class:`Undecodable`."""

    @abstractmethod
    def encode_audio(self, samples: np.ndarray) -> Message:
        """One frame of our audio (float32 at the call's rate) as the carrier's message."""

    def released(self) -> list[Inbound]:
        """Values held back by :meth:`decode` and due now (caller audio put back in order), oldest first."""
        return []

    def encode_mark(self, name: str) -> Message | None:
        """A mark for the far end to echo, where the dialect has them."""
        return None

    def encode_clear(self) -> Message | None:
        """Drop the audio the far end holds but has not played (barge-in), where the dialect can."""
        return None
