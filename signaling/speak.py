"""Speaking one clause: its engine stream's audio at the listener's rate, its word timings placed in the whole text.

A session (into its playout buffer) and a speech context (to a client that paces itself) speak a clause
the same way; only where the audio and the timings go differs, and that is what each passes in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

from cosyvoice import AudioStream, WordTiming
from media.resample import StreamResampler


class Timeline(Protocol):
    """What was spoken so far in one voice (an utterance, a context): each clause's audio and words follow it."""

    text: str  # all text received, which word timings index
    text_cursor: int  # where the next clause is looked for in ``text``
    audio_samples: int  # audio delivered, at the output rate
    words: list[WordTiming]  # in the timeline (s from its first sample) and its text


async def speak_clause(
    stream: AudioStream,
    clause: str,
    timeline: Timeline,
    output_rate: int,
    deliver: Callable[[np.ndarray], Awaitable[None]],
    *,
    announce: Callable[[tuple[WordTiming, ...]], Awaitable[None]] | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """``stream``'s audio, resampled to ``output_rate``, to ``deliver``; its word timings into ``timeline.words``.

    After each piece of audio, the timings that came with it go to ``announce`` too. ``pace`` is awaited
    before each engine chunk (backpressure inside one long stream). Raises what the stream raises; the
    stream is closed however this ends, so a cancelled caller stops the engine at once.
    """
    resampler = StreamResampler(stream.sample_rate, output_rate)
    # The clause's place: its audio follows all delivered so far, its text is the next match.
    seconds = timeline.audio_samples / output_rate
    chars = timeline.text.find(clause, timeline.text_cursor)
    if chars >= 0:
        timeline.text_cursor = chars + len(clause)
    taken = 0

    async def take(samples: np.ndarray) -> None:
        nonlocal taken
        if len(samples):
            timeline.audio_samples += len(samples)
            await deliver(samples)
        fresh = tuple(word.shifted(seconds, chars) for word in stream.words[taken:]) if chars >= 0 else ()
        taken = len(stream.words)
        if fresh:
            timeline.words.extend(fresh)
            if announce is not None:
                await announce(fresh)

    async with stream:
        async for chunk in stream:
            if pace is not None:
                await pace()
            await take(resampler.process(chunk))
        await take(resampler.flush())  # and the timings an engine sent after its last chunk
