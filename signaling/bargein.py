"""Caller speech on a call: ``speech.started``/``speech.stopped`` events, and barge-in.

When the caller starts talking over an utterance, the utterance is cancelled
(and the transport clears what the far end has queued) within about two
detection windows of the onset. Our own voice coming back as line echo must
not count: while we play, caller audio is speech only if its level is within
``echo_margin_db`` of the loudest audio we sent in the last ``echo_window``
seconds (a Geigel-style double-talk test); echo on phone lines returns
attenuated by well over that margin.

Detection runs off the event loop (but for a quiet line, which the model
never sees), in a small thread pool shared by every call, one job per call at a time; audio that arrives while a job runs waits
in a bounded queue (the oldest is dropped beyond it), so a call's detection
can fall behind but never stall the loop or grow without bound.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from media.vad import SpeechDetector, rms
from signaling.messages import BargeInEvent, SpeechStarted, SpeechStopped
from signaling.session import Session

# Silero runs one ONNX thread per job; a few jobs at once keep cores for synthesis and the loop.
_DETECTION = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="vad")
# Caller audio waiting for detection: a job runs in milliseconds, so a backlog this long means the
# machine is overloaded, and older audio matters less than what the caller says now.
MAX_PENDING_SECONDS = 0.5


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
        self._pending: deque[np.ndarray] = deque()
        self._pending_samples = 0
        self._max_pending = round(MAX_PENDING_SECONDS * sample_rate)
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._busy = False
        self.dropped_samples = 0

    def sent(self, samples: np.ndarray) -> None:
        """Audio we just sent toward the caller (the echo reference)."""
        now = time.monotonic()
        self._sent.append((now, rms(samples)))
        while self._sent and self._sent[0][0] < now - self.echo_window:
            self._sent.popleft()

    def heard(self, samples: np.ndarray) -> None:
        """Audio from the caller: judged at once if the line is quiet, else queued for detection (never waits)."""
        # A quiet line (most of a listening caller's audio) never reaches the model, so it is judged here, on the
        # loop: a thread hop, or even a wake of the detection task, per 20 ms frame costs more than the check.
        if not self._busy and not self._pending and self.detector.quiet(samples):
            self._judge(self.detector.process(samples))
            return
        self._pending.append(samples)
        self._pending_samples += len(samples)
        while self._pending_samples > self._max_pending and len(self._pending) > 1:
            dropped = self._pending.popleft()
            self._pending_samples -= len(dropped)
            self.dropped_samples += len(dropped)
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._detect(), name=f"barge-in {self.session.id}")

    def close(self) -> None:
        """Stop detection (the call ended)."""
        if self._worker is not None:
            self._worker.cancel()

    async def _detect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            audio = np.concatenate(self._pending)
            self._pending.clear()
            self._pending_samples = 0
            if self.detector.quiet(audio):
                self._judge(self.detector.process(audio))
                continue
            self._busy = True  # the detector's state is the thread's until it answers
            try:
                windows = await loop.run_in_executor(_DETECTION, self.detector.process, audio)
            finally:
                self._busy = False
            self._judge(windows)

    def _judge(self, windows) -> None:
        """Each window is speech if the model says so and it is louder than our echo could be."""
        for probability, level in windows:
            is_speech = probability >= self.threshold and level >= self._echo_level() * self.echo_ratio
            self._window(is_speech)

    def _echo_level(self) -> float:
        return max((rms for _, rms in self._sent), default=0.0)

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
                self.session.events.emit(SpeechStopped())

    def _start(self) -> None:
        self.speaking = True
        self.session.events.emit(SpeechStarted())
        if self.session.speaking:
            self.barge_ins += 1
            cancelled = self.session.cancel("barge-in")
            onset_ms = round((time.monotonic() - (self._onset or time.monotonic())) * 1000, 1)
            self.session.events.emit(BargeInEvent(utterances=tuple(cancelled), since_onset_ms=onset_ms))
