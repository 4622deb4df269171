"""The playout buffer: tagged audio in at any pace, fixed-size frames out at the listener's pace.

Audio is queued in segments tagged with the utterance it belongs to, with
zero-length items between them: marks (named points a client wants to hear
about) and ends (the utterance is complete). A paced reader pulls one frame at
a time; the report of each read says what was reached (marks, ends) and how
much silence had to stand in for missing audio. Silence only counts as an
underrun while an utterance is playing (between its first sample and its
end): before the first sample it is latency, after the end it is idle time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


@dataclass
class _Audio:
    tag: Hashable
    samples: np.ndarray
    position: int = 0


@dataclass
class _Mark:
    tag: Hashable
    name: str


@dataclass
class _End:
    tag: Hashable


class ReachedKind(StrEnum):
    """What a read played through; the value names Twilio marks (``mark-u1-3``)."""

    MARK = "mark"
    END = "end"


@dataclass
class Reached:
    """Something a read played through: a mark, or the end of an utterance."""

    kind: ReachedKind
    tag: Hashable
    name: str = ""
    played: int = 0  # samples of the tag played when it was reached


@dataclass
class Frame:
    """One read: exactly the requested number of samples, and what happened on the way."""

    samples: np.ndarray
    tags: list[Hashable] = field(default_factory=list)  # utterances that contributed audio
    reached: list[Reached] = field(default_factory=list)
    underrun: int = 0  # samples of silence inserted while an utterance was playing
    audio: int = 0  # samples of real audio in the frame


class PlayoutBuffer:
    """A FIFO of tagged audio, marks and ends, read in fixed-size frames."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._items: deque[_Audio | _Mark | _End] = deque()
        self._buffered = 0
        self._playing: Hashable | None = None
        self.played: dict[Hashable, int] = {}  # samples played per tag
        self.underrun_total = 0
        self.on_data: Callable[[], None] | None = None  # called whenever something is queued

    @property
    def buffered(self) -> int:
        """Samples of audio waiting to be played."""
        return self._buffered

    @property
    def playing(self) -> Hashable | None:
        """The utterance being heard now (first sample played, end not reached)."""
        return self._playing

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing playing."""
        return not self._items and self._playing is None

    def push(self, samples: np.ndarray, tag: Hashable) -> None:
        if len(samples):
            self._items.append(_Audio(tag, np.asarray(samples, dtype=np.float32)))
            self._buffered += len(samples)
            self._notify()

    def mark(self, name: str, tag: Hashable) -> None:
        """A named point after everything pushed so far."""
        self._items.append(_Mark(tag, name))
        self._notify()

    def end(self, tag: Hashable) -> None:
        """The utterance ``tag`` has no more audio."""
        self._items.append(_End(tag))
        self._notify()

    def clear(self) -> list[Hashable]:
        """Drop everything queued (barge-in); returns the tags that lost audio or their end."""
        dropped = list(dict.fromkeys(item.tag for item in self._items))
        if self._playing is not None and self._playing not in dropped:
            dropped.insert(0, self._playing)
        self._items.clear()
        self._buffered = 0
        self._playing = None
        return dropped

    def read(self, count: int) -> Frame:
        out = np.zeros(count, dtype=np.float32)
        frame = Frame(out)
        filled = 0
        while self._items:
            item = self._items[0]
            if isinstance(item, _Audio):
                if filled == count:
                    break
                take = min(count - filled, len(item.samples) - item.position)
                out[filled : filled + take] = item.samples[item.position : item.position + take]
                item.position += take
                filled += take
                self._buffered -= take
                self.played[item.tag] = self.played.get(item.tag, 0) + take
                self._playing = item.tag
                if item.tag not in frame.tags:
                    frame.tags.append(item.tag)
                if item.position == len(item.samples):
                    self._items.popleft()
                continue
            self._items.popleft()
            played = self.played.get(item.tag, 0)
            if isinstance(item, _Mark):
                frame.reached.append(Reached(ReachedKind.MARK, item.tag, item.name, played))
            else:
                frame.reached.append(Reached(ReachedKind.END, item.tag, played=played))
                if self._playing == item.tag:
                    self._playing = None
        frame.audio = filled
        if filled < count and self._playing is not None:
            frame.underrun = count - filled
            self.underrun_total += frame.underrun
        return frame

    def _notify(self) -> None:
        if self.on_data is not None:
            self.on_data()

    def forget(self, tag: Hashable) -> None:
        """Stop tracking a finished utterance's played count."""
        self.played.pop(tag, None)
