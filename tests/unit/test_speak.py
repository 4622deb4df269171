"""The clause loop sessions and speech contexts share: where a clause's audio and words go, pacing, cancelling."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from cosyvoice import AudioStream, WordTiming
from cosyvoice.timing import TimingSource
from signaling.speak import speak_clause

RATE = 8000
CHUNK = 400


def _word(text: str, start_s: float, char_start: int) -> WordTiming:
    return WordTiming(text, start_s, start_s + 0.05, char_start, char_start + len(text), TimingSource.ALIGNED)


HELLO, THERE = _word("Hello", 0.0, 0), _word("there", 0.05, 6)


@dataclass
class _Timeline:
    text: str
    text_cursor: int = 0
    audio_samples: int = 0
    words: list[WordTiming] = field(default_factory=list)


def _stream(log: list[str], *, gate: asyncio.Event | None = None) -> AudioStream:
    """Two chunks, the first with "Hello"; "there" comes alone after the last chunk, as engines may send it."""

    async def produce(emit) -> None:
        try:
            await emit(np.ones(CHUNK, np.float32), [HELLO])
            if gate is not None:
                await gate.wait()
            await emit(np.ones(CHUNK, np.float32))
            await emit(np.zeros(0, np.float32), [THERE])
        except asyncio.CancelledError:
            log.append("engine stopped")
            raise

    return AudioStream(RATE, produce)


async def test_a_clause_follows_the_audio_and_text_before_it_and_words_follow_their_audio() -> None:
    log: list[str] = []
    timeline = _Timeline("Hello there. Hello there.", text_cursor=12, audio_samples=RATE // 2)

    async def deliver(samples: np.ndarray) -> None:
        log.append(f"audio {len(samples)}")

    async def announce(words: tuple[WordTiming, ...]) -> None:
        log.append("words " + " ".join(word.text for word in words))

    async def pace() -> None:
        log.append("pace")

    await speak_clause(_stream(log), "Hello there.", timeline, RATE, deliver, announce=announce, pace=pace)
    # Paced before each engine chunk, not before the end; "there" is announced after the last audio.
    assert log == ["pace", "audio 400", "words Hello", "pace", "audio 400", "words there"]
    assert timeline.audio_samples == RATE // 2 + 2 * CHUNK
    assert timeline.text_cursor == len(timeline.text)
    assert timeline.words == [HELLO.shifted(0.5, 13), THERE.shifted(0.5, 13)]  # the second "Hello there."


async def test_a_clause_not_found_in_the_text_gives_audio_but_no_words() -> None:
    timeline = _Timeline("Something else.", text_cursor=3)
    delivered: list[int] = []

    async def deliver(samples: np.ndarray) -> None:
        delivered.append(len(samples))

    await speak_clause(_stream([]), "Hello there.", timeline, RATE, deliver)
    assert delivered == [CHUNK, CHUNK] and timeline.words == [] and timeline.text_cursor == 3


async def test_cancelling_the_caller_stops_the_engine_at_once() -> None:
    log: list[str] = []
    gate = asyncio.Event()  # never set: the engine is busy making the second chunk
    first = asyncio.Event()

    async def deliver(samples: np.ndarray) -> None:
        first.set()

    task = asyncio.create_task(speak_clause(_stream(log, gate=gate), "Hello", _Timeline("Hello"), RATE, deliver))
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the producer task runs its cancellation
    assert log == ["engine stopped"]
