"""The session state machine, driven by a scripted speech source and a hand-cranked playout.

The test plays the transport's part: it reads frames from the session's
buffer and hands each one back through ``on_frame``, so every count is exact.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import numpy as np
import pytest

from cosyvoice import UnknownVoice
from media.playout import Reached, ReachedKind
from signaling.messages import (
    AudioCleared,
    Error,
    Event,
    Mark,
    Playback,
    SessionClosedEvent,
    UtteranceCancelled,
    UtteranceDone,
    UtteranceFirstAudio,
    UtteranceStarted,
    UtteranceState,
)
from signaling.session import Session, SessionClosed, Transport, VoiceSettings
from support.waiting import first, until
from tests.unit.scripted import CHUNK, CLAUSE, FRAME, RATE, Script

E = TypeVar("E", bound=Event)


class Listener:
    """The transport's side: paced reads turned back into session events, and a record of both."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events: list[Event] = []
        self.heard: list[np.ndarray] = []
        session.events.tap = self.events.append

    def play(self, frames: int) -> None:
        for _ in range(frames):
            frame = self.session.buffer.read(FRAME)
            self.heard.append(frame.samples)
            self.session.on_frame(frame)
            for utterance in self.session.utterances.values():
                assert utterance.played_samples <= utterance.audio_samples, utterance

    async def play_out(self, limit: int = 500) -> None:
        """Play until nothing is being spoken or left to hear, letting synthesis run between frames."""
        for _ in range(limit):
            if not self.session.speaking and self.session.buffer.idle:
                return
            self.play(1)
            await asyncio.sleep(0)
        raise AssertionError(f"still speaking after {limit} frames")

    def kinds(self) -> list[type[Event]]:
        return [type(event) for event in self.events if not isinstance(event, Playback)]

    def event(self, kind: type[E]) -> E:
        (event,) = [event for event in self.events if isinstance(event, kind)]
        return event

    def audio(self) -> np.ndarray:
        """What was heard, without the silence that stood in for missing audio."""
        samples = np.concatenate(self.heard)
        return samples[samples != 0]


@pytest.fixture
async def script_and_session():
    script = Script()
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE)
    yield script, session, Listener(session)
    await session.close()


def ms(samples: int) -> int:
    return round(samples * 1000 / RATE)


async def test_text_in_pieces_is_spoken_clause_by_clause_then_done(script_and_session) -> None:
    script, session, listener = script_and_session
    utterance = session.say("Hello there, friend. ")
    assert session.say("How are you?", flush=True) is utterance
    assert utterance.state is UtteranceState.SPEAKING and utterance.flushed
    await listener.play_out()
    assert script.opened == ["Hello there,", "friend.", "How are you?"]
    assert listener.kinds() == [UtteranceStarted, UtteranceFirstAudio, UtteranceDone]
    assert utterance.state is UtteranceState.DONE
    done = listener.event(UtteranceDone).summary
    assert done.utterance_id == "u1" and done.text == "Hello there, friend. How are you?"
    assert done.state is UtteranceState.DONE and done.audio_ms == done.played_ms == ms(3 * CLAUSE)
    assert np.array_equal(listener.audio(), np.repeat([1.0, 2.0, 3.0], CLAUSE)), "every sample, in clause order"
    assert session.buffer.played == {}, "a finished utterance's count is forgotten"


async def test_each_flush_starts_a_new_utterance(script_and_session) -> None:
    script, session, listener = script_and_session
    assert session.flush() is None, "nothing to flush"
    session.say("First answer.", flush=True)
    session.say("Second answer.", flush=True)
    await listener.play_out()
    done = [event.summary.utterance_id for event in listener.events if isinstance(event, UtteranceDone)]
    assert done == ["u1", "u2"] and script.opened == ["First answer.", "Second answer."]
    assert session.stats().utterance_count == 2


async def test_a_mark_is_reported_when_the_audio_before_it_has_played(script_and_session) -> None:
    _, session, listener = script_and_session
    session.say("First part.")
    session.mark("after-first")
    session.say("And the second part.", flush=True)
    await listener.play_out()
    assert listener.kinds() == [UtteranceStarted, UtteranceFirstAudio, Mark, UtteranceDone]
    mark = listener.event(Mark)
    assert mark.name == "after-first" and mark.utterance_id == "u1"
    assert mark.played_ms == ms(CLAUSE), "exactly the first clause's audio was heard"


async def test_a_far_end_that_reports_playout_itself_confirms_marks(script_and_session) -> None:
    _, session, listener = script_and_session
    session.say("Only clause.")
    session.mark("m1")
    await until(lambda: session.buffer.buffered == CLAUSE, 2, "the clause synthesized")
    reached: list[Reached] = []
    for _ in range(CLAUSE // FRAME + 1):
        frame = session.buffer.read(FRAME)
        session.on_frame(frame, report_reached=False)
        reached += frame.reached
    assert Mark not in listener.kinds(), "not until the far end says it played"
    assert [(r.kind, r.name, r.played) for r in reached] == [(ReachedKind.MARK, "m1", CLAUSE)]
    session.on_reached(reached[0])
    assert listener.event(Mark).played_ms == ms(CLAUSE)


async def test_cancel_drops_queued_audio_stops_synthesis_and_the_session_goes_on(script_and_session) -> None:
    script, session, listener = script_and_session
    script.gates["Another clause there."] = asyncio.Event()  # never set: synthesis is mid-clause at the cancel
    utterance = session.say("One clause here. Another clause there. And a third one.")
    session.mark("never-heard")
    session.flush()
    await until(lambda: utterance.audio_samples == CLAUSE + CHUNK, 2, "the second clause's first chunk")
    listener.play(5)
    assert session.cancel("barge-in") == ["u1"]
    assert utterance.state is UtteranceState.CANCELLED and session.buffer.idle and not session.speaking
    cancelled = listener.event(UtteranceCancelled)
    assert cancelled.reason == "barge-in" and cancelled.summary.state is UtteranceState.CANCELLED
    assert cancelled.summary.played_ms == ms(5 * FRAME) < cancelled.summary.audio_ms == ms(CLAUSE + CHUNK)
    assert listener.event(AudioCleared).utterances == ("u1",)
    assert listener.kinds()[-2:] == [UtteranceCancelled, AudioCleared]
    await until(lambda: script.stopped == ["Another clause there."], 2, "the engine stream cancelled")
    # Jobs after the cancel belong to a fresh utterance; nothing queued before it is spoken.
    heard_before = len(listener.heard)
    session.say("Sorry, go ahead.", flush=True)
    await listener.play_out()
    assert script.opened == ["One clause here.", "Another clause there.", "Sorry, go ahead."]
    assert [e.summary.utterance_id for e in listener.events if isinstance(e, UtteranceDone)] == ["u2"]
    assert Mark not in listener.kinds()
    after = np.concatenate(listener.heard[heard_before:])
    assert set(np.unique(after[after != 0])) == {3.0}, "only the new utterance is heard after the cancel"
    assert utterance.state is UtteranceState.CANCELLED, "a cancelled utterance stays cancelled"


async def test_an_engine_failure_fails_its_utterance_only(script_and_session) -> None:
    script, session, listener = script_and_session
    script.failing.add("Broken clause.")
    broken = session.say("Broken clause. Fine clause.", flush=True)
    await listener.play_out()
    assert broken.state is UtteranceState.FAILED
    assert listener.kinds() == [UtteranceStarted, UtteranceFirstAudio, Error]
    error = listener.event(Error)
    assert (error.utterance_id, error.message, error.request_type) == ("u1", "the engine broke", None)
    assert script.opened == ["Broken clause."], "the rest of a failed utterance is not synthesized"
    assert broken.played_samples == broken.audio_samples == CHUNK, "what came before the failure was played"
    fine = session.say("After that.", flush=True)
    await listener.play_out()
    assert fine.state is UtteranceState.DONE and listener.kinds()[-1] is UtteranceDone


async def test_close_cancels_ends_the_event_stream_and_runs_callbacks(script_and_session) -> None:
    script, session, listener = script_and_session
    script.gates["still."] = asyncio.Event()
    closed: list[str] = []

    async def async_callback() -> None:
        closed.append("async")

    session.on_close(lambda: closed.append("sync"))
    session.on_close(async_callback)
    subscription = session.events.subscribe()
    utterance = session.say("Speaking now, still.", flush=True)
    await until(lambda: "still." in script.opened, 2, "the second clause started")
    await session.close("bye")
    assert utterance.state is UtteranceState.CANCELLED and session.closed and session.buffer.idle
    assert closed == ["sync", "async"]
    event = await first(subscription, lambda e: isinstance(e, SessionClosedEvent), 1, "session.closed")
    assert event.reason == "bye" and event.stats.utterance_count == 1
    async with asyncio.timeout(1):
        assert [e async for e in subscription] == [], "the stream ends after session.closed"
    await until(lambda: script.stopped == ["still."], 2, "the engine stream cancelled")
    with pytest.raises(SessionClosed):
        session.say("Too late.")
    with pytest.raises(SessionClosed):
        session.mark("too-late")
    await session.close("again")
    assert listener.kinds().count(SessionClosedEvent) == 1 and closed == ["sync", "async"]


async def test_a_voice_the_source_refuses_is_not_taken(script_and_session) -> None:
    _, session, _ = script_and_session
    session.configure(VoiceSettings(voice="joe", speed=1.5))
    with pytest.raises(UnknownVoice):
        session.configure(VoiceSettings(voice="nobody"))
    assert session.voice.voice == "joe" and session.voice.speed == 1.5
