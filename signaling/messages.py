"""What a session tells its clients: events and direct replies, as typed values.

Each message is a frozen dataclass of one :class:`EventKind`. Inside the
process they stay typed (the hub, the transports, the metrics tap); they
become JSON (``docs/sessions.md``) only at the edges, through
:meth:`Event.to_dict`. Field order is wire order, so the JSON is the same
byte for byte as when events were dicts. Names on the wire are ``StrEnum``
members: they print, format and serialise as their value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from cosyvoice.timing import TimingSource

if TYPE_CHECKING:
    from cosyvoice.engine import Mode
    from signaling.serializers.session import AudioFormat
    from signaling.session import Transport


class EventKind(StrEnum):
    """The ``type`` of a message a session sends."""

    UTTERANCE_STARTED = "utterance.started"
    UTTERANCE_FIRST_AUDIO = "utterance.first_audio"
    WORD = "word"
    PLAYBACK = "playback"
    MARK = "mark"
    UTTERANCE_DONE = "utterance.done"
    UTTERANCE_CANCELLED = "utterance.cancelled"
    AUDIO_CLEARED = "audio.cleared"
    SESSION_CLOSED = "session.closed"
    ERROR = "error"
    SPEECH_STARTED = "speech.started"
    SPEECH_STOPPED = "speech.stopped"
    BARGE_IN = "barge_in"
    DTMF = "dtmf"
    # Direct replies to one client message: never published, same envelope.
    SESSION_CREATED = "session.created"
    TEXT_ACCEPTED = "text.accepted"
    FLUSHED = "flushed"
    SESSION_UPDATED = "session.updated"
    PONG = "pong"


class UtteranceState(StrEnum):
    SPEAKING = "speaking"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


_ENVELOPE = frozenset({"session_id", "time", "dropped_events"})


def _optional() -> Any:
    """A field left out of the JSON when it is None (not sent as null)."""
    return field(default=None, metadata={"optional": True})


def _flattened() -> Any:
    """A field whose own fields are the message's (an utterance summary in ``utterance.done``)."""
    return field(metadata={"flattened": True})


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


@cache
def _layout(cls: type) -> tuple[tuple[str, bool, bool], ...]:
    """Each wire field of a message class in order, with whether it is optional and whether flattened."""
    return tuple(
        (spec.name, bool(spec.metadata.get("optional")), bool(spec.metadata.get("flattened")))
        for spec in fields(cls)
        if spec.name not in _ENVELOPE
    )


@dataclass(frozen=True, kw_only=True)
class Event:
    """The envelope every message carries; the session's hub stamps ``session_id`` and ``time``."""

    kind: ClassVar[EventKind]
    session_id: str = ""
    time: float = 0.0  # Unix seconds, to the millisecond
    dropped_events: int = 0  # events this subscriber lost just before this one (sent only when some were)

    def to_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": self.kind.value, "session_id": self.session_id, "time": self.time}
        for name, optional, flattened in _layout(type(self)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if flattened:
                message.update(value.to_dict())
            else:
                message[name] = _plain(value)
        if self.dropped_events:
            message["dropped_events"] = self.dropped_events
        return message

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass(frozen=True)
class UtteranceSummary:
    """One utterance as ``utterance.done``, ``utterance.cancelled`` and session descriptions show it."""

    utterance_id: str
    state: UtteranceState
    text: str
    first_audio_ms: float | None
    audio_ms: int
    played_ms: int
    heard_text: str | None  # None: the engine gave no word timings

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}


@dataclass(frozen=True)
class SessionStats:
    utterance_count: int
    first_audio_ms_p50: float | None
    underrun_ms: int
    buffered_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionDescription:
    """A session as the control API, ``session.created`` and ``session.updated`` show it."""

    session_id: str
    transport: Transport
    created: float  # Unix seconds
    voice: str
    mode: Mode
    sample_rate: int
    closed: bool
    utterances: tuple[UtteranceSummary, ...]  # the latest few, oldest first
    stats: SessionStats  # flattened into the description

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "transport": self.transport.value,
            "created": self.created,
            "voice": self.voice,
            "mode": self.mode.value,
            "sample_rate": self.sample_rate,
            "closed": self.closed,
            "utterances": [utterance.to_dict() for utterance in self.utterances],
            **self.stats.to_dict(),
        }


# Events: published on the session's hub.


@dataclass(frozen=True, kw_only=True)
class UtteranceStarted(Event):
    kind = EventKind.UTTERANCE_STARTED
    utterance_id: str


@dataclass(frozen=True, kw_only=True)
class UtteranceFirstAudio(Event):
    kind = EventKind.UTTERANCE_FIRST_AUDIO
    utterance_id: str
    latency_ms: float


@dataclass(frozen=True, kw_only=True)
class Word(Event):
    kind = EventKind.WORD
    utterance_id: str
    word: str
    start_ms: int
    end_ms: int
    char_start: int
    char_end: int
    source: TimingSource


@dataclass(frozen=True, kw_only=True)
class Playback(Event):
    kind = EventKind.PLAYBACK
    utterance_id: str
    played_ms: int


@dataclass(frozen=True, kw_only=True)
class Mark(Event):
    kind = EventKind.MARK
    name: str
    utterance_id: str
    played_ms: int


@dataclass(frozen=True, kw_only=True)
class UtteranceDone(Event):
    kind = EventKind.UTTERANCE_DONE
    summary: UtteranceSummary = _flattened()


@dataclass(frozen=True, kw_only=True)
class UtteranceCancelled(Event):
    kind = EventKind.UTTERANCE_CANCELLED
    reason: str
    summary: UtteranceSummary = _flattened()


@dataclass(frozen=True, kw_only=True)
class AudioCleared(Event):
    kind = EventKind.AUDIO_CLEARED
    reason: str
    utterances: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SessionClosedEvent(Event):
    """``session.closed`` (``signaling.session.SessionClosed`` is the exception a closed session raises)."""

    kind = EventKind.SESSION_CLOSED
    reason: str
    stats: SessionStats


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    kind = EventKind.ERROR
    utterance_id: str | None = _optional()  # a failed utterance's
    message: str
    request_type: str | None = _optional()  # the client message that caused it


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(Event):
    kind = EventKind.SPEECH_STARTED


@dataclass(frozen=True, kw_only=True)
class SpeechStopped(Event):
    kind = EventKind.SPEECH_STOPPED


@dataclass(frozen=True, kw_only=True)
class BargeInEvent(Event):
    """``barge_in`` (``signaling.bargein.BargeIn`` is the detector that emits it)."""

    kind = EventKind.BARGE_IN
    utterances: tuple[str, ...]
    since_onset_ms: float


@dataclass(frozen=True, kw_only=True)
class Dtmf(Event):
    kind = EventKind.DTMF
    digit: str


# Direct replies: sent to the one client that asked.


@dataclass(frozen=True, kw_only=True)
class SessionCreated(Event):
    kind = EventKind.SESSION_CREATED
    session: SessionDescription
    audio: AudioFormat | None = _optional()  # the WebSocket's audio format; WebRTC negotiates its own


@dataclass(frozen=True, kw_only=True)
class TextAccepted(Event):
    kind = EventKind.TEXT_ACCEPTED
    utterance_id: str


@dataclass(frozen=True, kw_only=True)
class Flushed(Event):
    kind = EventKind.FLUSHED
    utterance_id: str | None  # None (sent as null): there was nothing to flush


@dataclass(frozen=True, kw_only=True)
class SessionUpdated(Event):
    kind = EventKind.SESSION_UPDATED
    session: SessionDescription


@dataclass(frozen=True, kw_only=True)
class Pong(Event):
    kind = EventKind.PONG
    id: Any  # the ping's, echoed as the client sent it
