"""Split text into clauses as it arrives, so synthesis can start early.

The first clause of an utterance is cut at the first comma-like pause once it
has a few words: its audio comes back fast. Later clauses are cut at sentence
ends (and at commas only when they grow long), which keeps natural prosody.
The same splitter serves whole texts (HTTP) and text that arrives in pieces
(real-time sessions, LLM tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_END = frozenset(".!?…")
_CLAUSE_END = frozenset(",;:—")
# CJK punctuation and newlines end a clause without a following space.
_SENTENCE_END_CJK = frozenset("。！？；\n")
_CLAUSE_END_CJK = frozenset("，、：")
# Every character that can end a clause: found by the regex engine, so plain runs of text cost no Python steps.
_BREAK = re.compile("[" + re.escape("".join(_SENTENCE_END | _CLAUSE_END | _SENTENCE_END_CJK | _CLAUSE_END_CJK)) + "]")
_LEADING_SPACE = re.compile(r"\s*")
_SPEAKABLE = re.compile(r"[^\W_]")  # a letter or digit: a clause of only punctuation is not spoken
_CLOSERS = frozenset("\"')]}»”’」』")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no fig approx dept est inc ltd co mt".split()
)


@dataclass(frozen=True)
class ClauseOptions:
    """Where clauses are cut (the ``[engine]`` settings ``first_clause_chars``, ``clause_chars``, ``max_clause_chars``).

    ``first_clause_chars`` and ``clause_chars`` are the least text before a comma-like pause may end the first
    and every later clause; ``max_chars`` cuts a clause that finds no pause at all.
    """

    first_clause_chars: int = 10
    clause_chars: int = 120
    max_chars: int = 240


class ClauseSplitter:
    """Incremental clause segmentation: ``feed`` text, get finished clauses back.

    Linear in the text however it arrives: a clause is looked for only in the
    first ``max_chars`` characters after its start, and text already scanned
    for the current clause is not scanned again when more arrives.
    """

    def __init__(self, options: ClauseOptions = ClauseOptions()) -> None:
        self.first_clause_chars = options.first_clause_chars
        self.clause_chars = options.clause_chars
        self.max_chars = options.max_chars
        self._text = ""
        self._start = 0  # where the current clause begins in _text; what is before it is spoken for
        self._scan = 0  # _text before this holds no cut for the current clause
        self._clauses = 0

    @property
    def pending(self) -> str:
        """Text received but not yet part of a finished clause."""
        return self._text[self._start :]

    def feed(self, text: str) -> list[str]:
        """Add text; return the clauses it completed."""
        # After a drain less than max_chars is pending, so this copy is short.
        self._text = self._text[self._start :] + text
        self._scan -= self._start
        self._start = 0
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of input: return every remaining clause and start a new utterance."""
        clauses = self._drain(final=True)
        self.reset()
        return clauses

    def reset(self) -> None:
        """Drop pending text (barge-in) and start a new utterance."""
        self._text = ""
        self._start = self._scan = 0
        self._clauses = 0

    def _drain(self, *, final: bool) -> list[str]:
        clauses: list[str] = []
        while True:
            self._start = _LEADING_SPACE.match(self._text, self._start).end()
            self._scan = max(self._scan, self._start)
            cut = self._next_cut(final)
            if cut is None:
                return clauses
            clause = self._text[self._start : cut].strip()
            self._start = self._scan = cut
            if _SPEAKABLE.search(clause):
                clauses.append(clause)
                self._clauses += 1

    def _next_cut(self, final: bool) -> int | None:
        """Where the clause starting at ``_start`` ends, if that is already certain."""
        text, start = self._text, self._start
        if start == len(text):
            return None
        soft_min = self.first_clause_chars if self._clauses == 0 else self.clause_chars
        window = min(len(text), start + self.max_chars)
        i = self._scan
        while (found := _BREAK.search(text, i, window)) is not None:
            i = found.start()
            char = text[i]
            if char in _SENTENCE_END_CJK or (char in _CLAUSE_END_CJK and i - start >= soft_min):
                return _skip_closers(text, i + 1, window)
            if char in _CLAUSE_END_CJK:
                i += 1
                continue
            end = i + 1  # the clause's end, after a run of punctuation and closers, inside the window
            while end < window and (text[end] in _SENTENCE_END or text[end] in _CLAUSE_END):
                end += 1
            end = _skip_closers(text, end, window)
            if end == len(text):
                break  # the next character decides ("3." vs "3.5"); wait for it
            if text[end].isspace():
                if char in _SENTENCE_END and not _is_abbreviation(text, i, start):
                    return end
                if char in _CLAUSE_END and i - start >= soft_min:
                    return end
            i = end
        else:
            i = max(i, window)
        self._scan = i
        if final and len(text) - start <= self.max_chars:
            return len(text)
        if len(text) - start >= self.max_chars:
            space = text.rfind(" ", start, start + self.max_chars)
            return space if space > start else start + self.max_chars
        return None


def split_clauses(text: str, options: ClauseOptions = ClauseOptions()) -> list[str]:
    """Split a whole text into clauses (see :class:`ClauseSplitter`)."""
    splitter = ClauseSplitter(options)
    return splitter.feed(text) + splitter.flush()


def _skip_closers(text: str, index: int, limit: int) -> int:
    while index < limit and text[index] in _CLOSERS:
        index += 1
    return index


def _is_abbreviation(text: str, dot: int, clause_start: int) -> bool:
    if text[dot] != ".":
        return False
    start = dot
    while start > clause_start and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    word = text[start:dot]
    return (len(word) == 1 and word.isupper()) or word.lower() in _ABBREVIATIONS
