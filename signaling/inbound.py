"""Caller audio at the door: frames of a few packets at most, at real time plus some slack.

A call's inbound audio is a stream at a fixed rate (Twilio and Asterisk send
20 ms a packet), so anything far beyond it is a broken or hostile far end.
Each call admits audio through a token bucket that fills at real time: a
caller sending ten times real time costs what one at real time does, the
excess is dropped. A frame longer than a few packets is refused whole,
before it is decoded or analysed. Each kind of refusal is logged and
reported to the session's watchers once per call, then only counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from signaling.messages import Error
from signaling.session import Session

log = logging.getLogger(__name__)

# Eight 20 ms packets: far ends send one at a time; this leaves room for one that batches a few.
MAX_FRAME_SECONDS = 0.16
# How far ahead of real time a caller may get: the catch-up burst after a network stall of up to 1 s.
BURST_SECONDS = 1.0


class Verdict(Enum):
    ACCEPTED = "accepted"
    TOO_LARGE = "too_large"
    TOO_FAST = "too_fast"


@dataclass
class InboundStats:
    accepted_seconds: float = 0.0
    dropped_seconds: float = 0.0  # faster than real time
    refused_frames: int = 0  # too large


class CallerAudio:
    """One call's inbound audio: admitted by frame size and by rate; accepted audio counts as activity."""

    def __init__(
        self,
        session: Session,
        *,
        max_frame: float = MAX_FRAME_SECONDS,
        burst: float = BURST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.max_frame = max_frame
        self.burst = burst
        self.stats = InboundStats()
        self._clock = clock
        self._tokens = burst  # seconds of audio the caller may send now
        self._last = clock()
        self._reported: set[Verdict] = set()

    def admit(self, seconds: float) -> bool:
        """Whether a frame of ``seconds`` of audio may be used; refusals are counted and reported."""
        verdict = self._judge(seconds)
        if verdict is Verdict.ACCEPTED:
            self.stats.accepted_seconds += seconds
            self.session.touch()
            return True
        if verdict is Verdict.TOO_LARGE:
            self.stats.refused_frames += 1
            message = f"a caller audio frame of {seconds * 1000:.0f} ms was refused (at most {self.max_frame * 1000:.0f} ms)"
        else:
            self.stats.dropped_seconds += seconds
            message = "caller audio arrives faster than real time; the excess is dropped"
        if verdict not in self._reported:
            self._reported.add(verdict)
            log.warning("%s call %s: %s", self.session.transport, self.session.id, message)
            self.session.events.emit(Error(message=message))
        return False

    def log_summary(self) -> None:
        """At the end of a call: what was refused, if anything."""
        stats = self.stats
        if stats.refused_frames or stats.dropped_seconds:
            log.warning(
                "%s call %s: refused %d oversized caller frames and dropped %.1f s of caller audio sent beyond real time",
                self.session.transport, self.session.id, stats.refused_frames, stats.dropped_seconds,
            )  # fmt: skip

    def _judge(self, seconds: float) -> Verdict:
        if seconds > self.max_frame:
            return Verdict.TOO_LARGE
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last))
        self._last = now
        if seconds > self._tokens:
            return Verdict.TOO_FAST
        self._tokens -= seconds
        return Verdict.ACCEPTED
