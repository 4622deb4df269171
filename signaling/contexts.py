"""Speech contexts: streaming text into one continuous voice, delivered as fast as the engine makes it.

The ElevenLabs and Cartesia dialects both speak in *contexts*: a client sends
an LLM's reply token by token, the server answers with audio and its timing,
and the client plays and paces it itself. A :class:`SpeechContext` is that:
text is split into clauses as a session's is (:class:`~cosyvoice.text.ClauseSplitter`),
each clause is synthesized in turn by the same speech source and clause loop
(:func:`~signaling.speak.speak_clause`) sessions use, and
what comes out (audio, word timings in the context's timeline and text, flush
and end markers) is read with ``async for``. ``cancel`` stops the engine at once.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from cosyvoice import SynthesisError, WordTiming
from cosyvoice.text import ClauseOptions, ClauseSplitter
from signaling.session import SessionLimits, SpeechSource, TextTooLong, VoiceSettings
from signaling.speak import speak_clause

# Pieces of output that may wait for a client that stopped reading; beyond it the engine waits too.
# An engine chunk is 0.1-1 s of audio, so this holds a few seconds to a minute of it.
OUTPUT_BACKLOG = 64


class ContextClosed(Exception):
    """Text or a flush for a context whose input was closed or that was cancelled."""


@dataclass(frozen=True)
class AudioOut:
    """Audio at the context's output rate, following all audio before it."""

    samples: np.ndarray


@dataclass(frozen=True)
class WordsOut:
    """Timings of words spoken so far, in the context's timeline (s from its first sample) and text."""

    words: tuple[WordTiming, ...]


@dataclass(frozen=True)
class Flushed:
    """Everything sent before flush number ``number`` has been spoken."""

    number: int


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Finished:
    """The input was closed and all of it spoken: nothing more comes."""


Output = AudioOut | WordsOut | Flushed | Failed | Finished


class _Kind(enum.Enum):
    CLAUSE = "clause"
    FLUSH = "flush"
    END = "end"


@dataclass(frozen=True)
class _Job:
    kind: _Kind
    seq: int
    text: str = ""
    number: int = 0


class SpeechContext:
    """One context's text in, audio and timings out, in order."""

    def __init__(
        self,
        speech: SpeechSource,
        voice: VoiceSettings,
        output_rate: int,
        *,
        clause_options: ClauseOptions = ClauseOptions(),
        limits: SessionLimits | None = None,
    ) -> None:
        self.voice = voice
        self.output_rate = output_rate
        self.text = ""  # all text received, which word timings index
        self.audio_samples = 0  # audio delivered, at the output rate
        self.words: list[WordTiming] = []
        self.input_closed = False
        self.cancelled = False
        self._speech = speech
        self._limits = limits or SessionLimits()
        self._splitter = ClauseSplitter(clause_options)
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._output: asyncio.Queue[Output] = asyncio.Queue(OUTPUT_BACKLOG)
        self._flushes = 0
        self._seq = 0  # jobs queued so far
        self._flushed_seq = 0  # the last flush's job
        self._current_seq = 0  # the job being done
        self.text_cursor = 0  # where the next clause is looked for in ``text``
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="speech context")

    def say(self, text: str) -> None:
        """More text; complete clauses start synthesis at once. Raises ``TextTooLong`` and takes none of it."""
        self._check_open()
        if len(text) > self._limits.max_text_chars:
            raise TextTooLong(f"text of {len(text)} characters; at most {self._limits.max_text_chars} in one message")
        if len(self.text) + len(text) > self._limits.max_utterance_chars:
            raise TextTooLong(f"a context holds at most {self._limits.max_utterance_chars} characters; start another")
        self.text += text
        for clause in self._splitter.feed(text):
            self._queue(_Kind.CLAUSE, clause)

    def flush(self) -> int:
        """Speak the text held back waiting for a clause's end; a :class:`Flushed` with this number follows it."""
        self._check_open()
        self._queue_rest()
        self._flushes += 1
        self._flushed_seq = self._queue(_Kind.FLUSH, number=self._flushes)
        return self._flushes

    def close_input(self, *, drop_unflushed: bool = False) -> None:
        """No more text: speak the rest, then :class:`Finished`.

        ``drop_unflushed``: the text sent after the last flush is abandoned instead (an
        interrupted reply); if it is being spoken, the engine stops at once.
        """
        self._check_open()
        self.input_closed = True
        if not drop_unflushed:
            self._queue_rest()
            self._queue(_Kind.END)
            return
        self._splitter.reset()
        kept = [job for job in self._drain_jobs() if job.seq <= self._flushed_seq]
        for job in kept:
            self._jobs.put_nowait(job)
        self._queue(_Kind.END)
        if self._current_seq > self._flushed_seq:  # speaking abandoned text: stop it, end here
            self._worker.cancel()
            self._worker = asyncio.get_running_loop().create_task(self._output.put(Finished()), name="context end")

    def cancel(self) -> None:
        """Stop at once: the engine stream is cancelled, queued text and undelivered output dropped."""
        self.cancelled = True
        self._worker.cancel()
        self._splitter.reset()
        self._drain_jobs()
        while not self._output.empty():
            self._output.get_nowait()

    async def __aiter__(self) -> AsyncIterator[Output]:
        while not self.cancelled:
            piece = await self._output.get()
            yield piece
            if isinstance(piece, (Finished, Failed)):
                return

    def _check_open(self) -> None:
        if self.input_closed or self.cancelled:
            raise ContextClosed("the context is closed")

    def _queue(self, kind: _Kind, text: str = "", number: int = 0) -> int:
        self._seq += 1
        self._jobs.put_nowait(_Job(kind, self._seq, text, number))
        return self._seq

    def _queue_rest(self) -> None:
        for clause in self._splitter.flush():
            self._queue(_Kind.CLAUSE, clause)

    def _drain_jobs(self) -> list[_Job]:
        jobs = []
        while not self._jobs.empty():
            jobs.append(self._jobs.get_nowait())
        return jobs

    async def _run(self) -> None:
        while True:
            job = await self._jobs.get()
            self._current_seq = job.seq
            if job.kind is _Kind.FLUSH:
                await self._output.put(Flushed(job.number))
            elif job.kind is _Kind.END:
                await self._output.put(Finished())
                return
            else:
                try:
                    await self._speak(job.text)
                except SynthesisError as error:
                    await self._output.put(Failed(str(error)))
                    return

    async def _speak(self, clause: str) -> None:
        await speak_clause(
            self._speech.open(clause, self.voice), clause, self, self.output_rate,
            lambda samples: self._output.put(AudioOut(samples)),
            announce=lambda words: self._output.put(WordsOut(words)),
        )  # fmt: skip
