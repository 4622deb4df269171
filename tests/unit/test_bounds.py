"""A session's bounds, exactly: text and queue limits, synthesis a bounded lead ahead, the event loop shared."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from cosyvoice import InvalidRequest
from media.playout import Frame
from signaling.messages import Error, Event, SessionUpdated
from signaling.protocol import apply_off_loop
from signaling.session import QueueFull, Session, SessionLimits, TextTooLong, Transport, VoiceSettings
from signaling.transport import SessionTransport
from tests.unit.scripted import CLAUSE, FRAME, RATE, Script

LEAD = 0.3  # seconds: two clauses of 150 ms
QUEUED = 20


@pytest.fixture
async def bounded():
    script = Script()
    limits = SessionLimits(max_text_chars=40, max_utterance_chars=100, max_queued=QUEUED, max_lead_seconds=LEAD)
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, limits=limits)
    yield script, session
    await session.close()


async def test_text_beyond_the_limits_is_refused_whole(bounded) -> None:
    script, session = bounded
    with pytest.raises(TextTooLong, match="at most 40 in one message"):
        session.say("x" * 41)
    assert not session.utterances, "a refused message starts no utterance"
    session.say("y" * 40)
    session.say("y" * 40)
    with pytest.raises(TextTooLong, match="at most 100 characters"):
        session.say("y" * 21)
    assert len(session.utterances["u1"].text) == 80


async def test_a_full_queue_refuses_text_and_marks_until_synthesis_catches_up(bounded) -> None:
    script, session = bounded
    for n in range(QUEUED // 2):  # a clause and an utterance end each, taken before synthesis runs
        session.say(f"Clause {n}.", flush=True)
    with pytest.raises(QueueFull, match="waiting to be spoken"):
        session.say("One more.")
    with pytest.raises(QueueFull):
        session.mark("after")
    session.cancel()
    session.say("After the cancel.")


async def test_synthesis_runs_a_bounded_lead_ahead_and_everything_is_heard_in_order(bounded) -> None:
    script, session = bounded
    clauses = 8
    for n in range(1, clauses + 1):
        session.say(f"Clause {n}.", flush=True)
    await asyncio.sleep(0.2)  # nothing is played: synthesis must stop once the lead is buffered
    # A clause starts only while less than the lead is buffered: the lead plus one clause at most.
    assert session.buffer.buffered <= (LEAD * RATE) + CLAUSE
    assert len(script.opened) == round(LEAD * RATE / CLAUSE) + 1
    heard = []
    while session.speaking or not session.buffer.idle:
        frame = session.buffer.read(FRAME)
        session.on_frame(frame)
        heard.append(frame.samples)
        assert session.buffer.buffered <= (LEAD * RATE) + CLAUSE
        await asyncio.sleep(FRAME / RATE)  # the listener's pace: the lead is counted in real time
    assert script.opened == [f"Clause {n}." for n in range(1, clauses + 1)]
    audio = np.concatenate(heard)
    audio = audio[audio != 0]
    assert np.array_equal(audio, np.repeat(np.arange(1.0, clauses + 1), CLAUSE)), "every clause, whole, in order"


class _Recorder(SessionTransport):
    """A transport whose wire notes the loop turn each message went out in."""

    def __init__(self) -> None:
        super().__init__(lead=0.0)
        self.turn = 0
        self.turns: list[int] = []

    async def receive(self) -> None:
        await asyncio.Event().wait()

    async def send_frame(self, frame: Frame) -> None:
        self.session.on_frame(frame)

    async def write(self, message) -> None:
        self.turns.append(self.turn)

    async def close(self) -> None:
        pass

    async def on_event(self, event: Event) -> None:
        await self.send(event)


async def test_a_backlog_of_events_goes_out_one_per_turn() -> None:
    """A flood of bad messages makes as many error events; sent back to back they held the loop."""
    session = Session(Script(), transport=Transport.WEBSOCKET, output_rate=RATE)
    transport = _Recorder()
    serving = asyncio.ensure_future(transport.serve(session))
    await asyncio.sleep(0)  # subscribed
    backlog = 200
    for n in range(backlog):
        session.events.emit(Error(message=f"bad message {n}"))

    async def tick() -> None:
        while len(transport.turns) < backlog:
            transport.turn += 1
            await asyncio.sleep(0)

    await asyncio.wait_for(tick(), 5)
    widest = max(Counter(transport.turns).values())
    assert widest <= 2, f"{widest} events went out in one turn of the loop"
    await session.close()
    await asyncio.wait_for(serving, 5)


async def test_a_prompt_recording_in_session_update_is_decoded_off_the_event_loop() -> None:
    """A 50 s prompt took the loop 148 ms to decode (bench/hostile.py); a worker thread decodes it now."""
    session = Session(Script(), transport=Transport.WEBSOCKET, output_rate=RATE)
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def parse_voice(fields: dict, current: VoiceSettings) -> VoiceSettings:
        threads.append(threading.get_ident())
        if fields["prompt_audio_base64"] == "broken":
            raise InvalidRequest("prompt_audio_base64: not audio")
        return replace(current, prompt_text=fields["prompt_text"])

    update = {"type": "session.update", "prompt_audio_base64": "UklGRg==", "prompt_text": "Hello."}
    reply = await apply_off_loop(session, update, parse_voice)
    assert isinstance(reply, SessionUpdated) and session.voice.prompt_text == "Hello."
    errors: list[Event] = []
    session.events.tap = errors.append
    assert await apply_off_loop(session, {**update, "prompt_audio_base64": "broken"}, parse_voice) is None
    assert [error.message for error in errors] == ["prompt_audio_base64: not audio"], "reported as for any message"
    assert threads and loop_thread not in threads
    assert await apply_off_loop(session, {"type": "ping"}, parse_voice) is not None  # everything else as before
    await session.close()
