"""Speech contexts on a scripted speech source: order, flushes, the end, interruption, failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from signaling.contexts import AudioOut, ContextClosed, Failed, Finished, Flushed, SpeechContext
from signaling.session import VoiceSettings
from tests.unit.scripted import CLAUSE, RATE, Script


async def _collect(context: SpeechContext, timeout: float = 5.0) -> list:
    pieces = []

    async def read() -> None:
        async for piece in context:
            pieces.append(piece)

    await asyncio.wait_for(read(), timeout)
    return pieces


def _audio(pieces: list) -> np.ndarray:
    return np.concatenate([p.samples for p in pieces if isinstance(p, AudioOut)])


async def test_clauses_in_order_then_a_flush_marker_then_the_end() -> None:
    script = Script()
    context = SpeechContext(script, VoiceSettings(), RATE)
    context.say("First clause here. Second clause")  # the second waits for its end, or a flush
    number = context.flush()
    context.say("Third one.")
    context.close_input()
    pieces = await _collect(context)
    assert script.opened == ["First clause here.", "Second clause", "Third one."]
    kinds = [type(p) for p in pieces if not isinstance(p, AudioOut)]
    assert kinds == [Flushed, Finished] and number == 1
    flushed_at = pieces.index(next(p for p in pieces if isinstance(p, Flushed)))
    assert len(_audio(pieces[:flushed_at])) == 2 * CLAUSE  # the flush comes after the two clauses before it
    assert list(np.unique(_audio(pieces))) == [1.0, 2.0, 3.0] and context.audio_samples == 3 * CLAUSE
    with pytest.raises(ContextClosed):
        context.say("More.")


async def test_closing_with_unflushed_text_stops_the_clause_being_spoken_at_once() -> None:
    script = Script()
    script.gates["An interrupted reply,"] = asyncio.Event()  # never set: the engine is mid-clause
    context = SpeechContext(script, VoiceSettings(), RATE)
    context.say("Kept. ")
    context.flush()
    context.say("An interrupted reply, and more after it")
    reading = asyncio.ensure_future(_collect(context))
    while "An interrupted reply," not in script.opened:
        await asyncio.sleep(0.01)
    context.close_input(drop_unflushed=True)
    pieces = await reading
    assert isinstance(pieces[-1], Finished)
    assert script.finished == ["Kept."] and script.stopped == ["An interrupted reply,"]
    assert "and more after it" not in " ".join(script.opened)


async def test_closing_with_unflushed_text_still_speaks_what_was_flushed() -> None:
    script = Script()
    script.gates["Flushed one."] = asyncio.Event()
    context = SpeechContext(script, VoiceSettings(), RATE)
    context.say("Flushed one. Flushed two.")
    context.flush()
    context.say("Dropped three. Dropped four.")
    reading = asyncio.ensure_future(_collect(context))
    while "Flushed one." not in script.opened:
        await asyncio.sleep(0.01)
    context.close_input(drop_unflushed=True)
    script.gates["Flushed one."].set()
    pieces = await reading
    assert script.finished == ["Flushed one.", "Flushed two."]
    assert [type(p) for p in pieces if not isinstance(p, AudioOut)] == [Flushed, Finished]


async def test_cancel_stops_the_engine_and_drops_what_was_not_delivered() -> None:
    script = Script()
    script.gates["Being spoken,"] = asyncio.Event()
    context = SpeechContext(script, VoiceSettings(), RATE)
    context.say("Being spoken, and the rest. Never spoken.")
    while "Being spoken," not in script.opened:
        await asyncio.sleep(0.01)
    context.cancel()
    await asyncio.sleep(0.05)
    assert script.stopped == ["Being spoken,"] and script.opened == ["Being spoken,"]
    with pytest.raises(ContextClosed):
        context.flush()


async def test_an_engine_failure_ends_the_context_with_failed() -> None:
    script = Script()
    script.failing.add("Breaks.")
    context = SpeechContext(script, VoiceSettings(), RATE)
    context.say("Breaks. Never reached.")
    context.close_input()
    pieces = await _collect(context)
    assert isinstance(pieces[-1], Failed) and "broke" in pieces[-1].message
    assert "Never reached." not in script.finished
