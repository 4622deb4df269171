"""Which of Piper's phonemes belong to which word of the text, and so when each word is heard.

Piper (in the worker) reports a clause's phonemes with the samples each one lasted. Its
phonemizer does not keep word boundaries one for one: "of the" comes out as one phoneme word,
"2024" as three. So each text word is phonemized on its own, and that sequence is lined up with
the clause's phonemes by edit distance: every spoken phoneme gets the word it most likely came
from. A word lasts from its first phoneme's start to its last phoneme's end; the spaces and
punctuation pauses between words belong to no word.

Pure functions, no Piper import: the worker calls them with Piper's output.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cosyvoice.timing import word_spans

_STRESS = frozenset("ˈˌ")  # silent themselves, but they take time before the vowel they mark, inside the word
_SILENT = frozenset(" ^$_") | _STRESS  # word gap, sentence start/end, pad, stress marks: not matched to words


@dataclass(frozen=True)
class Sound:
    """One phoneme as spoken: its symbol and its span in the clause's audio (samples)."""

    phoneme: str
    start: int
    end: int


@dataclass(frozen=True)
class WordSpan:
    """A word's span in the clause's text (characters) and in its audio (samples)."""

    char_start: int
    char_end: int
    start: int
    end: int


def is_sound(phoneme: str) -> bool:
    """A phoneme that is part of a word (not a gap, a stress mark or a punctuation pause)."""
    return phoneme not in _SILENT and not all(unicodedata.category(char).startswith("P") for char in phoneme)


def words_in_audio(text: str, sounds: Sequence[Sound], lexicon: Callable[[str], Sequence[str]]) -> list[WordSpan]:
    """The words of ``text`` with their audio spans, from the ``sounds`` Piper spoke for it.

    ``lexicon`` gives a word's phonemes said alone. A word none of whose phonemes were found
    in the audio gets an empty span where it would have been.
    """
    spans = word_spans(text)
    spoken: list[Sound] = []
    stress_from: int | None = None  # where a run of stress marks just before the next sound began
    for sound in sounds:
        if sound.phoneme in _STRESS:
            stress_from = sound.start if stress_from is None else stress_from
            continue
        if is_sound(sound.phoneme):
            spoken.append(Sound(sound.phoneme, sound.start if stress_from is None else stress_from, sound.end))
        stress_from = None
    expected: list[tuple[str, int]] = [
        (phoneme, index)
        for index, (first, last) in enumerate(spans)
        for phoneme in lexicon(text[first:last])
        if is_sound(phoneme)
    ]
    labels = _label([p for p, _ in expected], [s.phoneme for s in spoken], [w for _, w in expected])
    bounds: list[list[int] | None] = [None] * len(spans)
    for sound, word in zip(spoken, labels):
        if word is None:
            continue
        bound = bounds[word]
        if bound is None:
            bounds[word] = [sound.start, sound.end]
        else:
            bound[1] = sound.end
    result, previous_end = [], sounds[0].start if sounds else 0
    for (first, last), bound in zip(spans, bounds):
        start, end = bound if bound is not None else (previous_end, previous_end)
        result.append(WordSpan(first, last, start, end))
        previous_end = end
    return result


def _label(expected: Sequence[str], spoken: Sequence[str], words: Sequence[int]) -> list[int | None]:
    """For each spoken phoneme, the word of the expected phoneme it lines up with (edit distance).

    A spoken phoneme with no counterpart joins the word before it (or, at the start, the first word).
    """
    if list(expected) == list(spoken):
        return list(words)
    n, m = len(expected), len(spoken)
    if n == 0:
        return [None] * m
    # cost[i][j]: edits to turn expected[:i] into spoken[:j]
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        row, above = cost[i], cost[i - 1]
        row[0] = i
        for j in range(1, m + 1):
            row[j] = min(
                above[j - 1] + (expected[i - 1] != spoken[j - 1]),
                above[j] + 1,  # an expected phoneme not spoken
                row[j - 1] + 1,  # a spoken phoneme not expected
            )
    labels: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i][j] == cost[i - 1][j - 1] + (expected[i - 1] != spoken[j - 1]):
            i, j = i - 1, j - 1
            labels[j] = words[i]
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    for j in range(m):  # unmatched spoken phonemes join their neighbour
        if labels[j] is None:
            labels[j] = labels[j - 1] if j > 0 else words[0]
    return labels
