"""The session core: incremental text in, paced audio out, the same for every transport.

Text arrives in pieces (an LLM's tokens, a phone script, a browser). It is
split into clauses as it arrives and each clause is synthesized as soon as
it is complete, so the listener hears the start of a reply before its end
has been written. With ``text_streaming`` on an engine that takes text as it
arrives (CosyVoice v2/v3), an utterance's text instead goes to one engine
stream piece by piece, so the reply keeps one prosody and no clause gaps. Text between two flushes is one utterance. ``cancel``
(barge-in) stops the engine work and drops every queued sample at once.

Audio goes into a :class:`~media.playout.PlayoutBuffer` at the transport's
rate; the transport reads it at real-time pace and hands each frame's report
back to :meth:`Session.on_frame`, which turns it into events: marks, played
time, words as they begin to play, utterance done. Events are published on
the session's :class:`~signaling.events.EventHub`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Protocol

import numpy as np

from cosyvoice import AudioStream, SpeechParams, SynthesisError, WordTiming
from cosyvoice.text import ClauseOptions, ClauseSplitter
from cosyvoice.text_stream import TextStream
from cosyvoice.timing import heard_text
from media.playout import Frame, PlayoutBuffer, Reached, ReachedKind
from signaling.events import EventHub
from signaling.messages import (
    AudioCleared,
    Error,
    Mark,
    Playback,
    SessionClosedEvent,
    SessionDescription,
    SessionStats,
    UtteranceCancelled,
    UtteranceDone,
    UtteranceFirstAudio,
    UtteranceStarted,
    UtteranceState,
    UtteranceSummary,
    Word,
)
from signaling.speak import speak_clause

log = logging.getLogger(__name__)

PLAYBACK_EVENT_INTERVAL = 0.5  # seconds between "playback" progress events
KEPT_UTTERANCES = 50


class Transport(StrEnum):
    """What carries a session; the value names it in session descriptions, metrics and logs."""

    WEBSOCKET = "websocket"
    WEBRTC = "webrtc"
    TWILIO = "twilio"
    AUDIOSOCKET = "audiosocket"
    # The other carriers' media streams (gateway/carriers.py), each by the name in its routes.
    TELNYX = "telnyx"
    PLIVO = "plivo"
    VONAGE = "vonage"
    EXOTEL = "exotel"
    SIGNALWIRE = "signalwire"
    FREESWITCH = "freeswitch"
    JAMBONZ = "jambonz"
    ASTERISK = "asterisk"


# How a session speaks (the engine's own parameters); any transport can change it between utterances.
VoiceSettings = SpeechParams


class SpeechSource(Protocol):
    """Where a session gets audio: the gateway's engine and voice registry."""

    def check(self, voice: VoiceSettings) -> None:
        """Raise ``InvalidRequest`` if ``voice`` cannot be used."""

    def open(self, text: str, voice: VoiceSettings) -> AudioStream:
        """Start synthesis of one clause."""

    def streams_text(self, voice: VoiceSettings) -> bool:
        """Whether :meth:`open_text` can speak in ``voice`` (asked only of sessions with ``text_streaming``)."""

    def open_text(self, text: str, voice: VoiceSettings, more: TextStream) -> AudioStream:
        """Start synthesis of ``text`` and then of every piece of ``more``, as one utterance."""


class SessionClosed(Exception):
    pass


@dataclass(frozen=True)
class SessionLimits:
    """What one session may hold, so that no client can take more than its share of memory or engine time."""

    max_text_chars: int = 4096  # text in one ``say`` (one message)
    max_utterance_chars: int = 20_000  # text in one utterance (~20 minutes of speech)
    max_queued: int = 1000  # clauses waiting for synthesis (marks and utterance ends count too)
    max_lead_seconds: float = 10.0  # synthesized audio not yet played; beyond it the next clause waits


class LimitExceeded(Exception):
    """A client asked a session to hold more than its limits allow; nothing of the request was taken."""


class TextTooLong(LimitExceeded):
    """Too much text in one message or one utterance."""


class QueueFull(LimitExceeded):
    """Too many clauses waiting; the client should wait for playback to catch up."""


@dataclass
class Utterance:
    id: str
    started: float = field(default_factory=time.monotonic)
    text: str = ""
    flushed: bool = False
    state: UtteranceState = UtteranceState.SPEAKING
    first_audio_latency: float | None = None  # from the text that completed the first clause
    audio_samples: int = 0
    played_samples: int = 0
    # Word timings in the utterance's timeline (seconds from its first sample) and text, as the engine gave them.
    words: list[WordTiming] = field(default_factory=list)
    words_announced: int = 0  # words[:words_announced] have had their ``word`` event
    text_cursor: int = 0  # where the next clause is looked for in ``text``

    def heard_text(self, sample_rate: int) -> str | None:
        """The text up to the last word that began playing; None where the engine gave no word timings."""
        if self.played_samples == 0:
            return ""
        if not self.words:
            return None
        return heard_text(self.text, self.words, self.played_samples / sample_rate)

    def summary(self, sample_rate: int) -> UtteranceSummary:
        return UtteranceSummary(
            utterance_id=self.id,
            state=self.state,
            text=self.text,
            first_audio_ms=None if self.first_audio_latency is None else round(self.first_audio_latency * 1000, 1),
            audio_ms=round(self.audio_samples * 1000 / sample_rate),
            played_ms=round(self.played_samples * 1000 / sample_rate),
            heard_text=self.heard_text(sample_rate),
        )


class JobKind(Enum):
    CLAUSE = "clause"  # text to synthesize
    STREAM = "stream"  # text to synthesize, and more of it as it arrives
    MARK = "mark"  # a named point in the audio
    END = "end"  # the utterance's text is complete


@dataclass
class _Job:
    utterance: Utterance
    kind: JobKind
    text: str = ""
    since: float = 0.0  # when the text that completed the clause arrived
    more: TextStream | None = None  # a STREAM job's text to come


class Session:
    """One listener's stream of speech."""

    def __init__(
        self,
        speech: SpeechSource,
        *,
        transport: Transport,
        output_rate: int,
        voice: VoiceSettings | None = None,
        clause_options: ClauseOptions = ClauseOptions(),
        session_id: str | None = None,
        limits: SessionLimits | None = None,
        text_streaming: bool = False,
    ) -> None:
        self.id = session_id or "s_" + secrets.token_hex(8)
        self.transport = Transport(transport)
        self.voice = voice or VoiceSettings()
        self.created = time.time()
        self.buffer = PlayoutBuffer(output_rate)
        self.events = EventHub(self.id)
        self.utterances: dict[str, Utterance] = {}
        self.closed = False
        self.close_reason = ""
        self.owner: str | None = None  # the API key's name, when keys are on
        self.limits = limits or SessionLimits()
        self._speech = speech
        self._splitter = ClauseSplitter(clause_options)
        self.text_streaming = text_streaming
        self._more: TextStream | None = None  # the current utterance's engine stream takes text as it comes
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._current: Utterance | None = None
        self._count = 0
        self._last_activity = time.monotonic()
        self._last_playback_event = 0.0
        self._on_close: list[Callable[[], object]] = []
        self._worker = asyncio.get_running_loop().create_task(self._synthesize(), name=f"session {self.id}")

    # Control: any transport, or the control API, drives a session through these.

    def configure(self, voice: VoiceSettings) -> None:
        self._speech.check(voice)
        self.voice = voice
        self._touch()

    def say(self, text: str, *, flush: bool = False) -> Utterance:
        """Add text to the current utterance (starting one if needed).

        Raises :class:`LimitExceeded` (and takes none of the text) beyond the session's limits.
        """
        self._check_open()
        self._check_room(text)
        utterance = self._current or self._start_utterance()
        utterance.text += text
        now = time.monotonic()
        if self._more is not None:
            self._more.append(text)
        elif self.text_streaming and _speakable(first := self._splitter.pending + text) and \
                self._speech.streams_text(self.voice):
            self._splitter.reset()
            self._more = TextStream()
            self._jobs.put_nowait(_Job(utterance, JobKind.STREAM, first, now, self._more))
        else:
            for clause in self._splitter.feed(text):
                self._jobs.put_nowait(_Job(utterance, JobKind.CLAUSE, clause, now))
        if flush:
            self.flush()
        self._touch()
        return utterance

    def flush(self) -> Utterance | None:
        """End of the current utterance's text: speak the rest, then report it done."""
        self._check_open()
        utterance = self._current
        if utterance is None:
            return None
        now = time.monotonic()
        self._end_text_stream()
        for clause in self._splitter.flush():
            self._jobs.put_nowait(_Job(utterance, JobKind.CLAUSE, clause, now))
        self._jobs.put_nowait(_Job(utterance, JobKind.END))
        utterance.flushed = True
        self._current = None
        self._touch()
        return utterance

    def mark(self, name: str) -> None:
        """A named point after all text so far; a ``mark`` event says when it was played."""
        self._check_open()
        self._check_room(name)
        utterance = self._current or self._start_utterance()
        self._end_text_stream()  # a mark ends the streamed text it follows: its audio comes first
        for clause in self._splitter.flush():  # a mark ends the clause it follows
            self._jobs.put_nowait(_Job(utterance, JobKind.CLAUSE, clause, time.monotonic()))
        self._jobs.put_nowait(_Job(utterance, JobKind.MARK, name))
        self._touch()

    def cancel(self, reason: str = "cancel") -> list[str]:
        """Barge-in: stop synthesis, drop queued audio and text; returns the cancelled utterances."""
        self._splitter.reset()
        self._end_text_stream()
        while not self._jobs.empty():
            self._jobs.get_nowait()
        self._worker.cancel()
        self.buffer.clear()
        self._current = None
        cancelled = []
        for utterance in self.utterances.values():
            if utterance.state is UtteranceState.SPEAKING:
                utterance.state = UtteranceState.CANCELLED
                cancelled.append(utterance.id)
                self.events.emit(UtteranceCancelled(reason=reason, summary=utterance.summary(self.buffer.sample_rate)))
        self.events.emit(AudioCleared(reason=reason, utterances=tuple(cancelled)))
        if not self.closed:
            self._worker = asyncio.get_running_loop().create_task(self._synthesize(), name=f"session {self.id}")
        self._touch()
        return cancelled

    def on_close(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` (sync, or returning an awaitable) when the session closes."""
        self._on_close.append(callback)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._worker.cancel()
        self._splitter.reset()
        self._end_text_stream()
        self.buffer.clear()
        for utterance in self.utterances.values():
            if utterance.state is UtteranceState.SPEAKING:
                utterance.state = UtteranceState.CANCELLED
        self.events.emit(SessionClosedEvent(reason=reason, stats=self.stats()))
        self.events.close()
        for callback in self._on_close:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("session %s: close callback failed", self.id)

    # The transport's side.

    def on_frame(self, frame: Frame, *, report_reached: bool = True) -> None:
        """Turn what a paced read played into events.

        A transport whose far end reports playout itself (Twilio echoes marks
        once the audio before them has played) passes ``report_reached=False``
        and calls :meth:`on_reached` when the far end confirms.
        """
        rate = self.buffer.sample_rate
        for tag in frame.tags:
            utterance = self.utterances.get(tag)
            if utterance is not None:
                utterance.played_samples = self.buffer.played.get(tag, 0)
                self._announce_words(utterance)
        if report_reached:
            for reached in frame.reached:
                self.on_reached(reached)
        now = time.monotonic()
        if frame.audio:
            self._last_activity = now
            if now - self._last_playback_event >= PLAYBACK_EVENT_INTERVAL and frame.tags:
                self._last_playback_event = now
                utterance = self.utterances.get(frame.tags[-1])
                if utterance is not None:
                    played_ms = round(utterance.played_samples * 1000 / rate)
                    self.events.emit(Playback(utterance_id=utterance.id, played_ms=played_ms))

    def on_reached(self, reached: Reached) -> None:
        """The listener has heard everything up to a mark or an utterance's end."""
        utterance = self.utterances.get(reached.tag)
        if utterance is None or utterance.state not in (UtteranceState.SPEAKING, UtteranceState.DONE):
            return  # cancelled: its marks come back from a cleared far-end queue
        rate = self.buffer.sample_rate
        if reached.kind is ReachedKind.MARK:
            played_ms = round(reached.played * 1000 / rate)
            self.events.emit(Mark(name=reached.name, utterance_id=utterance.id, played_ms=played_ms))
        elif utterance.state is UtteranceState.SPEAKING:
            utterance.state = UtteranceState.DONE
            utterance.played_samples = reached.played
            self._announce_words(utterance, every=True)
            self.events.emit(UtteranceDone(summary=utterance.summary(rate)))
            self.buffer.forget(reached.tag)

    @property
    def speaking(self) -> bool:
        """An utterance is being synthesized or played."""
        return any(utterance.state is UtteranceState.SPEAKING for utterance in self.utterances.values())

    def idle_for(self) -> float:
        """Seconds with no text, no control and no audio playing."""
        if not self.buffer.idle or not self._jobs.empty():
            return 0.0
        return time.monotonic() - self._last_activity

    def touch(self) -> None:
        """Count inbound traffic (caller audio, pings) as activity."""
        self._touch()

    def stats(self) -> SessionStats:
        rate = self.buffer.sample_rate
        latencies = [u.first_audio_latency for u in self.utterances.values() if u.first_audio_latency is not None]
        return SessionStats(
            utterance_count=len(self.utterances),
            first_audio_ms_p50=round(sorted(latencies)[len(latencies) // 2] * 1000, 1) if latencies else None,
            underrun_ms=round(self.buffer.underrun_total * 1000 / rate),
            buffered_ms=round(self.buffer.buffered * 1000 / rate),
        )

    def describe(self, latest: int = 10) -> SessionDescription:
        """The session and its ``latest`` utterances, for the control API and the session's own events."""
        return SessionDescription(
            session_id=self.id,
            transport=self.transport,
            created=self.created,
            voice=self.voice.voice,
            mode=self.voice.mode,
            sample_rate=self.buffer.sample_rate,
            closed=self.closed,
            utterances=tuple(u.summary(self.buffer.sample_rate) for u in list(self.utterances.values())[-latest:]),
            stats=self.stats(),
        )

    # Internals.

    def _start_utterance(self) -> Utterance:
        self._count += 1
        utterance = Utterance(f"u{self._count}")
        self.utterances[utterance.id] = utterance
        while len(self.utterances) > KEPT_UTTERANCES:
            del self.utterances[next(iter(self.utterances))]
        self._current = utterance
        self.events.emit(UtteranceStarted(utterance_id=utterance.id))
        return utterance

    def _end_text_stream(self) -> None:
        if self._more is not None:
            self._more.close()
            self._more = None

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosed(f"session {self.id} is closed ({self.close_reason})")

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _check_room(self, text: str) -> None:
        limits = self.limits
        if len(text) > limits.max_text_chars:
            raise TextTooLong(f"text of {len(text)} characters; at most {limits.max_text_chars} in one message")
        held = len(self._current.text) if self._current is not None else 0
        if held + len(text) > limits.max_utterance_chars:
            raise TextTooLong(
                f"an utterance holds at most {limits.max_utterance_chars} characters ({held} so far); "
                "flush it and start another"
            )
        if (queued := self._jobs.qsize()) >= limits.max_queued:
            raise QueueFull(f"{queued} clauses are waiting to be spoken; send more once playback catches up")

    async def _wait_for_listener(self) -> None:
        """Backpressure: synthesize a clause only while less than ``max_lead_seconds`` of audio waits to be heard.

        The buffer drains at real time while the transport reads it, so sleeping for the excess is exact;
        a stalled reader (a client that stopped reading) keeps synthesis waiting instead of piling up audio.
        """
        rate = self.buffer.sample_rate
        while (excess := self.buffer.buffered / rate - self.limits.max_lead_seconds) > 0:
            await asyncio.sleep(excess)

    async def _synthesize(self) -> None:
        """Clause jobs in order, one engine stream at a time, into the playout buffer."""
        while True:
            job = await self._jobs.get()
            utterance = job.utterance
            if job.kind is JobKind.END:
                self.buffer.end(utterance.id)
            elif job.kind is JobKind.MARK:
                self.buffer.mark(job.text, utterance.id)
            elif utterance.state is UtteranceState.SPEAKING:
                await self._wait_for_listener()
                await self._speak(job)

    async def _speak(self, job: _Job) -> None:
        utterance = job.utterance
        try:
            if job.more is not None:
                stream = self._speech.open_text(job.text, self.voice, job.more)
            else:
                stream = self._speech.open(job.text, self.voice)
            await speak_clause(
                stream, job.text, utterance, self.buffer.sample_rate,
                lambda samples: self._push(utterance, samples, job.since),
                # one stream for the whole utterance: backpressure inside it
                pace=self._wait_for_listener if job.more is not None else None,
            )  # fmt: skip
            if job.more is not None:  # its pieces followed its first text: the next clause comes after them
                utterance.text_cursor += len(job.more.text)
        except SynthesisError as error:
            self._fail(utterance, error)

    async def _push(self, utterance: Utterance, samples: np.ndarray, since: float) -> None:
        if utterance.first_audio_latency is None:
            utterance.first_audio_latency = time.monotonic() - since
            latency_ms = round(utterance.first_audio_latency * 1000, 1)
            self.events.emit(UtteranceFirstAudio(utterance_id=utterance.id, latency_ms=latency_ms))
        self.buffer.push(samples, utterance.id)

    def _announce_words(self, utterance: Utterance, *, every: bool = False) -> None:
        """``word`` events for the words whose start has now been played (``every``: all the rest)."""
        played = utterance.played_samples / self.buffer.sample_rate
        words = utterance.words
        while utterance.words_announced < len(words):
            word = words[utterance.words_announced]
            if not every and word.start_s >= played:
                return
            utterance.words_announced += 1
            self.events.emit(Word(
                utterance_id=utterance.id, word=word.text,
                start_ms=round(word.start_s * 1000), end_ms=round(word.end_s * 1000),
                char_start=word.char_start, char_end=word.char_end, source=word.source,
            ))  # fmt: skip

    def _fail(self, utterance: Utterance, error: Exception) -> None:
        log.warning("session %s utterance %s failed: %s", self.id, utterance.id, error)
        utterance.state = UtteranceState.FAILED
        self.buffer.end(utterance.id)
        self.events.emit(Error(utterance_id=utterance.id, message=str(error)))


def _speakable(text: str) -> bool:
    """Text an engine can start on (an engine refuses punctuation alone)."""
    return any(char.isalnum() for char in text)
