"""Checks shared by the ElevenLabs and Cartesia dialect tests: word times against the audio, and leaks."""

from __future__ import annotations

import asyncio

import numpy as np

from support.servers import ServerThread
from support.waiting import wait_until
from tests.audio_checks import window_levels_db

WINDOW_S = 0.02
# The embedded voice's speech is -30..-10 dBFS in a 20 ms window; its pauses between sentences are
# digital silence (under -60). A word's loudest window above -40 is speech; a pause's middle under -50 is not.
SPEECH_DB, SILENCE_DB = -40.0, -50.0
SENTENCE_PAUSE_S = 0.15  # piper's pause between sentences is 0.2 s or more; word gaps inside one are shorter
EDGE_S = 0.04  # two windows either side of a pause: word ends are rounded to ms and fade out


def assert_words_match_audio(samples: np.ndarray, rate: int, words: list[tuple[str, float, float]]) -> None:
    """Each word's span holds speech, inside the audio; each long gap between words is silence."""
    levels = window_levels_db(samples, rate, WINDOW_S)
    duration = len(samples) / rate
    assert words, "no word timings"
    for text, start, end in words:
        assert 0 <= start < end <= duration + 0.002, (text, start, end, duration)
        first, last = int(start / WINDOW_S), max(int(start / WINDOW_S) + 1, int(end / WINDOW_S))
        assert levels[first:last].max() > SPEECH_DB, f"no speech in {text!r} at {start:.3f}-{end:.3f} s"
    for (_, _, end), (following, start, _) in zip(words, words[1:]):
        assert end <= start + 0.002, "words overlap"
        if start - end > SENTENCE_PAUSE_S:
            quiet = levels[int((end + EDGE_S) / WINDOW_S) : int((start - EDGE_S) / WINDOW_S)]
            assert len(quiet) and quiet.min() < SILENCE_DB, f"the pause before {following!r} at {end:.3f} s has sound"


def assert_engine_free(server: ServerThread, timeout: float = 2.0) -> None:
    """No engine work left and no context task alive: nothing leaked by the socket or request just ended."""

    async def context_tasks() -> list[str]:
        names = ("speech context", "context ")
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(names) and not t.done()]

    def free() -> bool:
        tasks = asyncio.run_coroutine_threadsafe(context_tasks(), server.loop).result(5)
        return server.engine.busy == 0 and not tasks

    wait_until(free, timeout, "the engine and every context task to be freed")


def assert_word_starts_match_audio(samples: np.ndarray, rate: int, starts: list[tuple[str, float]]) -> None:
    """For clients that keep only start times (pipecat): speech begins within each word's first 100 ms."""
    levels = window_levels_db(samples, rate, WINDOW_S)
    assert starts, "no word timings"
    for text, start in starts:
        assert 0 <= start < len(samples) / rate, (text, start)
        first = int(start / WINDOW_S)
        assert levels[first : first + 5].max() > SPEECH_DB, f"no speech where {text!r} starts, at {start:.3f} s"
    assert [start for _, start in starts] == sorted(start for _, start in starts)
