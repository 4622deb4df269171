"""The wire shape of every session message, pinned: typed inside, the same JSON outside.

The expected strings are what the gateway sent when events were dicts (key order included);
the documented fields come from the events table in ``docs/sessions.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cosyvoice.timing import TimingSource
from signaling import events as hub_module
from signaling import messages
from signaling.events import EventHub
from signaling.messages import (
    AudioCleared,
    BargeInEvent,
    Dtmf,
    Error,
    Event,
    EventKind,
    Flushed,
    Mark,
    Playback,
    Pong,
    SessionClosedEvent,
    SessionCreated,
    SessionStats,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TextAccepted,
    UtteranceCancelled,
    UtteranceDone,
    UtteranceFirstAudio,
    UtteranceStarted,
    UtteranceState,
    UtteranceSummary,
    Word,
)

DOCS = Path(__file__).parents[2] / "docs" / "sessions.md"
DONE = UtteranceSummary("u1", UtteranceState.DONE, "Grüße, Ana.", 81.5, 1200, 1200, "Grüße, Ana.")
CUT = UtteranceSummary("u1", UtteranceState.CANCELLED, "Grüße, Ana.", None, 1200, 400, None)
DESCRIBED = {"session_id": "s_1", "transport": "websocket"}
PCM = {"format": "pcm", "sample_rate": 24000, "channels": 1, "frame_ms": 20}
HEAD = '"session_id": "s_1", "time": 1765000000.123'

WIRE: list[tuple[Event, str]] = [
    (UtteranceStarted(utterance_id="u1"),
     '{"type": "utterance.started", ' + HEAD + ', "utterance_id": "u1"}'),
    (UtteranceFirstAudio(utterance_id="u1", latency_ms=81.5),
     '{"type": "utterance.first_audio", ' + HEAD + ', "utterance_id": "u1", "latency_ms": 81.5}'),
    (Word(utterance_id="u1", word="Grüße", start_ms=0, end_ms=455, char_start=0, char_end=5, source=TimingSource.ALIGNED),
     '{"type": "word", ' + HEAD + ', "utterance_id": "u1", "word": "Grüße", "start_ms": 0, "end_ms": 455, '
     '"char_start": 0, "char_end": 5, "source": "aligned"}'),
    (Playback(utterance_id="u1", played_ms=500),
     '{"type": "playback", ' + HEAD + ', "utterance_id": "u1", "played_ms": 500}'),
    (Mark(name="after-eta", utterance_id="u1", played_ms=620),
     '{"type": "mark", ' + HEAD + ', "name": "after-eta", "utterance_id": "u1", "played_ms": 620}'),
    (UtteranceDone(summary=DONE),
     '{"type": "utterance.done", ' + HEAD + ', "utterance_id": "u1", "state": "done", "text": "Grüße, Ana.", '
     '"first_audio_ms": 81.5, "audio_ms": 1200, "played_ms": 1200, "heard_text": "Grüße, Ana."}'),
    (UtteranceCancelled(reason="barge-in", summary=CUT),
     '{"type": "utterance.cancelled", ' + HEAD + ', "reason": "barge-in", "utterance_id": "u1", "state": "cancelled", '
     '"text": "Grüße, Ana.", "first_audio_ms": null, "audio_ms": 1200, "played_ms": 400, "heard_text": null}'),
    (AudioCleared(reason="barge-in", utterances=("u1", "u2")),
     '{"type": "audio.cleared", ' + HEAD + ', "reason": "barge-in", "utterances": ["u1", "u2"]}'),
    (SessionClosedEvent(reason="client disconnected", stats=SessionStats(2, None, 0, 40)),
     '{"type": "session.closed", ' + HEAD + ', "reason": "client disconnected", "stats": {"utterance_count": 2, '
     '"first_audio_ms_p50": null, "underrun_ms": 0, "buffered_ms": 40}}'),
    (Error(utterance_id="u1", message="the engine broke"),
     '{"type": "error", ' + HEAD + ', "utterance_id": "u1", "message": "the engine broke"}'),
    (Error(message="unknown message type 'x'", request_type="x"),
     '{"type": "error", ' + HEAD + ', "message": "unknown message type \'x\'", "request_type": "x"}'),
    (Error(message="undecodable media payload ignored"),
     '{"type": "error", ' + HEAD + ', "message": "undecodable media payload ignored"}'),
    (Dtmf(digit="7"), '{"type": "dtmf", ' + HEAD + ', "digit": "7"}'),
    (SpeechStarted(), '{"type": "speech.started", ' + HEAD + "}"),
    (SpeechStopped(), '{"type": "speech.stopped", ' + HEAD + "}"),
    (BargeInEvent(utterances=("u1",), since_onset_ms=12.5),
     '{"type": "barge_in", ' + HEAD + ', "utterances": ["u1"], "since_onset_ms": 12.5}'),
    (SessionCreated(session=DESCRIBED, audio=PCM),
     '{"type": "session.created", ' + HEAD + ', "session": {"session_id": "s_1", "transport": "websocket"}, '
     '"audio": {"format": "pcm", "sample_rate": 24000, "channels": 1, "frame_ms": 20}}'),
    (SessionCreated(session=DESCRIBED),
     '{"type": "session.created", ' + HEAD + ', "session": {"session_id": "s_1", "transport": "websocket"}}'),
    (TextAccepted(utterance_id="u1"), '{"type": "text.accepted", ' + HEAD + ', "utterance_id": "u1"}'),
    (Flushed(utterance_id=None), '{"type": "flushed", ' + HEAD + ', "utterance_id": null}'),
    (SessionUpdated(session=DESCRIBED),
     '{"type": "session.updated", ' + HEAD + ', "session": {"session_id": "s_1", "transport": "websocket"}}'),
    (Pong(id=3), '{"type": "pong", ' + HEAD + ', "id": 3}'),
    (Pong(id=None), '{"type": "pong", ' + HEAD + ', "id": null}'),
]  # fmt: skip


@pytest.fixture
def hub(monkeypatch) -> EventHub:
    monkeypatch.setattr(hub_module.time, "time", lambda: 1765000000.1234)  # stamped to the millisecond
    return EventHub("s_1")


@pytest.mark.parametrize(("event", "wire"), WIRE, ids=[f"{event.kind}-{n}" for n, (event, _) in enumerate(WIRE)])
def test_each_message_serialises_to_the_json_it_always_had(hub: EventHub, event: Event, wire: str) -> None:
    stamped = hub.stamped(event)
    assert stamped.to_json() == wire
    assert json.dumps(stamped.to_dict(), ensure_ascii=False) == wire, "to_dict holds only plain JSON values"


async def test_a_subscriber_that_lost_events_gets_the_count_last(hub: EventHub) -> None:
    subscription = hub.subscribe(maxsize=1)
    hub.emit(Playback(utterance_id="u1", played_ms=0))
    hub.emit(Playback(utterance_id="u1", played_ms=500))
    wire = '{"type": "playback", ' + HEAD + ', "utterance_id": "u1", "played_ms": 500, "dropped_events": 1}'
    assert (await anext(subscription)).to_json() == wire


def test_every_kind_has_one_message_class_and_a_pinned_shape() -> None:
    classes = [c for c in vars(messages).values() if isinstance(c, type) and issubclass(c, Event) and c is not Event]
    assert sorted(c.kind for c in classes) == sorted(EventKind), "one class per kind"
    assert {type(event) for event, _ in WIRE} == set(classes), "a new message needs its wire shape pinned above"


def documented_fields() -> dict[str, set[str]]:
    """The events table of docs/sessions.md: each type's fields."""
    section = DOCS.read_text().split("## Server events", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in re.findall(r"^\| (`[^|]+) \| ([^|]+) \|", section, re.MULTILINE):
        kinds, fields = (re.findall(r"`([^`]+)`", cell) for cell in row)
        if row[1].startswith("same as done"):
            fields += table["utterance.done"]
        for kind in kinds:
            table[kind] = set(fields)
    return table


def test_events_carry_the_fields_the_protocol_documents() -> None:
    table = documented_fields()
    replies = SessionCreated | TextAccepted | Flushed | SessionUpdated | Pong  # documented with the client messages
    published = {event.kind for event, _ in WIRE if not isinstance(event, replies)}
    assert set(table) == {kind.value for kind in published}, "the docs list every event, and only events"
    sent: dict[str, set[str]] = {}
    for event, _ in WIRE:  # an optional field counts when any sample sends it (error's utterance_id or request_type)
        sent.setdefault(event.kind.value, set()).update(set(event.to_dict()) - {"type", "session_id", "time"})
    assert {kind: sent[kind] for kind in table} == table
