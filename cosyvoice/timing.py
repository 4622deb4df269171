"""Word timings: when each word of a request's text is heard in its audio.

Engines attach them to the audio they deliver (see :class:`~cosyvoice.engine.AudioStream.words`);
sessions turn them into ``word`` events and into what a listener heard before a cut, and the
ElevenLabs/Cartesia dialects into their alignments. A timing says where it came from: the voice
model's own durations (``ALIGNED``) or a share of the audio by the text's weight (``ESTIMATED``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

# A word: letters or digits, joined by apostrophes, hyphens or dots inside ("don't", "well-known", "3.5").
# CJK ideographs and kana are written without spaces: each one counts as a word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+(?:['’.\-](?:(?![{_CJK}])[^\W_])+)*")


class TimingSource(str, enum.Enum):
    """Where a word's times come from."""

    ALIGNED = "aligned"  # the voice model's durations of the word's own sounds
    ESTIMATED = "estimated"  # the audio shared out by weight (phonemes, text tokens): close, not exact


@dataclass(frozen=True)
class WordTiming:
    """One word of the text: its span in the text and in the audio.

    ``start_s``/``end_s`` count from the first sample of the stream that carries it;
    ``char_start``/``char_end`` index the request's text (``text == request.text[char_start:char_end]``).
    Pauses (spaces, punctuation) lie between words, in no word.
    """

    text: str
    start_s: float
    end_s: float
    char_start: int
    char_end: int
    source: TimingSource

    def shifted(self, seconds: float = 0.0, chars: int = 0) -> WordTiming:
        """The same word in a longer timeline or text (a clause within a stream or an utterance)."""
        return replace(
            self, start_s=self.start_s + seconds, end_s=self.end_s + seconds,
            char_start=self.char_start + chars, char_end=self.char_end + chars,
        )  # fmt: skip


def word_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of the words in ``text``."""
    return [match.span() for match in _WORD.finditer(text)]


def spread(
    text: str, spans: Sequence[tuple[int, int]], weights: Sequence[float], start_s: float, end_s: float
) -> list[WordTiming]:
    """Share ``[start_s, end_s)`` out among the words at ``spans`` by their ``weights`` (estimated timings)."""
    total = sum(weights)
    if not spans or total <= 0:
        return []
    timings, elapsed = [], 0.0
    scale = (end_s - start_s) / total
    for (first, last), weight in zip(spans, weights, strict=True):
        begin = start_s + elapsed * scale
        elapsed += weight
        timings.append(
            WordTiming(text[first:last], begin, start_s + elapsed * scale, first, last, TimingSource.ESTIMATED)
        )
    return timings


def heard_text(text: str, words: Sequence[WordTiming], played_s: float) -> str:
    """``text`` up to the end of the last word whose start has been played: what a listener heard before a cut.

    A word counts as heard once it has begun, as a ``word`` event announces it.
    """
    end = 0
    for word in words:
        if word.start_s >= played_s:
            break
        end = word.char_end
    return text[:end]


def char_spans(text: str, words: Sequence[WordTiming], end_s: float | None = None) -> list[tuple[float, float]]:
    """Each character's (start, end) in the audio, for character alignments (ElevenLabs' shape).

    A word's characters share its span evenly; the characters between two words (spaces,
    punctuation) share the pause between them; those after the last word share the time up
    to ``end_s`` (the audio's end; the last word's end when not given). ``words`` index ``text``.
    """
    spans: list[tuple[float, float]] = []

    def share(first: int, last: int, start: float, end: float) -> None:
        count = last - first
        step = (end - start) / count if count else 0.0
        spans.extend((start + k * step, start + (k + 1) * step) for k in range(count))

    chars, seconds = 0, 0.0
    for word in words:
        share(chars, word.char_start, seconds, max(seconds, word.start_s))
        share(word.char_start, word.char_end, word.start_s, word.end_s)
        chars, seconds = word.char_end, word.end_s
    share(chars, len(text), seconds, seconds if end_s is None else max(seconds, end_s))
    return spans
