"""Caller speech on a call: ``speech.started``/``speech.stopped`` events, and barge-in.

When the caller starts talking over an utterance, the utterance is cancelled
(and the transport clears what the far end has queued) within about two
detection windows of the onset. Our own voice coming back as line echo must
not count: while we play, caller audio is speech only if its level is within
``echo_margin_db`` of the loudest audio we sent in the last ``echo_window``
seconds (a Geigel-style double-talk test); echo on phone lines returns
attenuated by well over that margin.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from media.vad import SpeechDetector
from signaling.session import Session


class BargeIn:
    def __init__(
        self,
        session: Session,
        sample_rate: int,
        *,
        threshold: float = 0.5,
        min_speech: float = 0.06,
        min_silence: float = 0.3,
        echo_margin_db: float = 6.0,
        echo_window: float = 0.5,
    ) -> None:
        self.session = session
        self.detector = SpeechDetector(sample_rate)
        self.threshold = threshold
        self.min_speech = min_speech
        self.min_silence = min_silence
        self.echo_ratio = 10 ** (-echo_margin_db / 20)
        self.echo_window = echo_window
        self.speaking = False
        self.barge_ins = 0
        self._sent: deque[tuple[float, float]] = deque()  # (time, RMS) of frames we sent
        self._speech_run = 0.0
        self._silence_run = 0.0
        self._onset: float | None = None

    def sent(self, samples: np.ndarray) -> None:
        """Audio we just sent toward the caller (the echo reference)."""
        now = time.monotonic()
        self._sent.append((now, float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0))
        while self._sent and self._sent[0][0] < now - self.echo_window:
            self._sent.popleft()

    def heard(self, samples: np.ndarray) -> None:
        """Audio from the caller."""
        for probability, level in self.detector.process(samples):
            far = max((rms for _, rms in self._sent), default=0.0)
            is_speech = probability >= self.threshold and level >= far * self.echo_ratio
            self._window(is_speech)

    def _window(self, is_speech: bool) -> None:
        step = self.detector.window_seconds
        if is_speech:
            if self._speech_run == 0.0:
                self._onset = time.monotonic()
            self._speech_run += step
            self._silence_run = 0.0
            if not self.speaking and self._speech_run >= self.min_speech:
                self._start()
        else:
            self._silence_run += step
            self._speech_run = 0.0
            if self.speaking and self._silence_run >= self.min_silence:
                self.speaking = False
                self.session.events.emit("speech.stopped")

    def _start(self) -> None:
        self.speaking = True
        self.session.events.emit("speech.started")
        if self.session.speaking:
            self.barge_ins += 1
            cancelled = self.session.cancel("barge-in")
            onset_ms = round((time.monotonic() - (self._onset or time.monotonic())) * 1000, 1)
            self.session.events.emit("barge_in", utterances=cancelled, since_onset_ms=onset_ms)
