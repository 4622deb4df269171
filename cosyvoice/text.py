"""Split text into clauses as it arrives, so synthesis can start early.

The first clause of an utterance is cut at the first comma-like pause once it
has a few words: its audio comes back fast. Later clauses are cut at sentence
ends (and at commas only when they grow long), which keeps natural prosody.
The same splitter serves whole texts (HTTP) and text that arrives in pieces
(real-time sessions, LLM tokens).
"""

from __future__ import annotations

_SENTENCE_END = frozenset(".!?…")
_CLAUSE_END = frozenset(",;:—")
# CJK punctuation and newlines end a clause without a following space.
_SENTENCE_END_CJK = frozenset("。！？；\n")
_CLAUSE_END_CJK = frozenset("，、：")
_CLOSERS = frozenset("\"')]}»”’」』")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no fig approx dept est inc ltd co mt".split()
)


class ClauseSplitter:
    """Incremental clause segmentation: ``feed`` text, get finished clauses back."""

    def __init__(self, *, first_clause_chars: int = 10, clause_chars: int = 120, max_chars: int = 240) -> None:
        self.first_clause_chars = first_clause_chars
        self.clause_chars = clause_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._clauses = 0

    @property
    def pending(self) -> str:
        """Text received but not yet part of a finished clause."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add text; return the clauses it completed."""
        self._buffer += text
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of input: return every remaining clause and start a new utterance."""
        clauses = self._drain(final=True)
        self._buffer = ""
        self._clauses = 0
        return clauses

    def reset(self) -> None:
        """Drop pending text (barge-in) and start a new utterance."""
        self._buffer = ""
        self._clauses = 0

    def _drain(self, *, final: bool) -> list[str]:
        clauses: list[str] = []
        while True:
            self._buffer = self._buffer.lstrip()
            cut = self._next_cut(final)
            if cut is None:
                return clauses
            clause, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if _speakable(clause):
                clauses.append(clause)
                self._clauses += 1

    def _next_cut(self, final: bool) -> int | None:
        text = self._buffer
        if not text:
            return None
        soft_min = self.first_clause_chars if self._clauses == 0 else self.clause_chars
        i = 0
        while i < len(text):
            char = text[i]
            if char in _SENTENCE_END_CJK or (char in _CLAUSE_END_CJK and i >= soft_min):
                return _skip_closers(text, i + 1)
            if char in _SENTENCE_END or char in _CLAUSE_END:
                end = i + 1
                while end < len(text) and (text[end] in _SENTENCE_END or text[end] in _CLAUSE_END):
                    end += 1
                end = _skip_closers(text, end)
                if end == len(text):
                    break  # the next character decides ("3." vs "3.5"); wait for it
                if text[end].isspace():
                    if char in _SENTENCE_END and not _is_abbreviation(text, i):
                        return end
                    if char in _CLAUSE_END and i >= soft_min:
                        return end
                i = end
                continue
            i += 1
        if final:
            return len(text)
        if len(text) >= self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None


def split_clauses(text: str, **options: int) -> list[str]:
    """Split a whole text into clauses (see :class:`ClauseSplitter`)."""
    splitter = ClauseSplitter(**options)
    return splitter.feed(text) + splitter.flush()


def _skip_closers(text: str, index: int) -> int:
    while index < len(text) and text[index] in _CLOSERS:
        index += 1
    return index


def _is_abbreviation(text: str, dot: int) -> bool:
    if text[dot] != ".":
        return False
    start = dot
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    word = text[start:dot]
    return (len(word) == 1 and word.isupper()) or word.lower() in _ABBREVIATIONS


def _speakable(clause: str) -> bool:
    return any(char.isalnum() for char in clause)
