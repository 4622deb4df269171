"""The engine contract every transport consumes.

A transport builds a :class:`SynthesisRequest`, asks an :class:`Engine` for an
:class:`AudioStream` and iterates it. Chunks are float32 mono PCM in [-1, 1]
at ``stream.sample_rate``; they are yielded as soon as the engine has them.
Cancelling the stream (or leaving its ``async with`` block) stops the engine
work behind it, not only the delivery.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from cosyvoice.errors import AudioTooLong, EngineUnavailable, InvalidRequest, UnknownVoice, UnsupportedMode
from cosyvoice.timing import WordTiming

MIN_SPEED = 0.25
MAX_SPEED = 4.0
MAX_SEED = 2**32 - 1  # what every random generator an engine may seed accepts


class Mode(str, enum.Enum):
    """Synthesis modes of the CosyVoice family (see the API contract, section 1)."""

    SFT = "sft"
    ZERO_SHOT = "zero_shot"
    CROSS_LINGUAL = "cross_lingual"
    INSTRUCT = "instruct"
    INSTRUCT2 = "instruct2"
    VC = "vc"


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono float32 samples with their rate: prompt or source audio for a request."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(eq=False)
class SavedVoice:
    """A voice from the registry: a prompt recording, its transcript, and what engines derived from it.

    An engine that needs speech tokens, a speaker embedding or prompt
    features computes them the first time and keeps them in ``features``
    under its own key; ``store_features`` (set by the registry) persists them
    so the work is done once per voice, not once per request or restart.
    """

    id: str
    prompt_audio: Audio | None
    prompt_text: str = ""
    features: dict[str, Any] = field(default_factory=dict)
    store_features: Callable[[str, Any], None] | None = None

    def remember(self, key: str, value: Any) -> None:
        self.features[key] = value
        if self.store_features is not None:
            self.store_features(key, value)


@dataclass(frozen=True)
class SpeechParams:
    """How to speak, whatever the text: one value from a route (or a session's settings) to the engine.

    Which fields matter depends on ``mode``; each default is the one every API surface uses.
    """

    voice: str | None = None
    mode: Mode = Mode.SFT
    speed: float = 1.0
    seed: int = 0
    instruct_text: str = ""
    prompt_text: str = ""
    prompt_audio: Audio | None = None
    source_audio: Audio | None = None


@dataclass(frozen=True)
class SynthesisRequest(SpeechParams):
    """What to say and how.

    ``voice`` names a built-in voice, or a saved one: then ``saved_voice``
    carries it (the gateway looks it up in the registry), and its prompt
    audio and transcript serve the cloning modes.
    """

    text: str = ""
    saved_voice: SavedVoice | None = None
    stream: bool = True

    @classmethod
    def of(
        cls, text: str, params: SpeechParams, *, saved_voice: SavedVoice | None = None, stream: bool = True
    ) -> SynthesisRequest:
        """``text`` spoken as ``params`` say."""
        how = {param.name: getattr(params, param.name) for param in fields(SpeechParams)}
        return cls(text=text, saved_voice=saved_voice, stream=stream, **how)


@dataclass(frozen=True)
class Capabilities:
    """What the loaded engine can do; reported by health and voice routes."""

    engine: str
    model: str
    modes: frozenset[Mode]
    sample_rate: int
    voices: tuple[str, ...]
    default_voice: str | None
    gpu: bool = False
    languages: tuple[str, ...] = field(default=())
    text_streaming: bool = False  # speaks text as it arrives (cosyvoice.text_stream.TextStreamingEngine)


class Emit(Protocol):
    """How a producer hands over audio: a chunk, and the word timings that became known with it.

    ``words`` count from the stream's first sample and index the request's text; a producer may
    pass an empty chunk to deliver timings alone.
    """

    def __call__(self, samples: np.ndarray, words: Sequence[WordTiming] = ()) -> Awaitable[None]: ...


Producer = Callable[[Emit], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class _Timed:
    """Queue item: a chunk with the word timings that came with it."""

    samples: np.ndarray
    words: tuple[WordTiming, ...]


class _End:
    """Queue marker: the producer finished."""


@dataclass
class _Failure:
    error: BaseException


class StreamOutcome(enum.StrEnum):
    """How a stream ended; its value labels the syntheses metric."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class StreamStats:
    """How a stream went, as its consumer saw it (monotonic seconds)."""

    started: float
    first_chunk: float | None = None
    finished: float | None = None
    samples: int = 0
    outcome: StreamOutcome = StreamOutcome.RUNNING

    @property
    def time_to_first_chunk(self) -> float | None:
        return None if self.first_chunk is None else self.first_chunk - self.started


class AudioStream:
    """A cancellable async iterator of PCM chunks.

    The producer runs as its own task and starts at once, so the first chunk
    is being made before the consumer asks for it; a small bounded queue lets
    it work ahead by ``lookahead`` chunks and no further. ``cancel()`` is
    synchronous so it can be called from ``finally`` blocks and callbacks: it
    cancels the producer task, which frees the engine work at its next await.
    ``stats`` records what the consumer got and when; callbacks added with
    :meth:`add_done_callback` run once when the stream ends, however it ends.
    :attr:`words` grows with the chunks the consumer takes.
    """

    def __init__(self, sample_rate: int, producer: Producer, *, lookahead: int = 2) -> None:
        self.sample_rate = sample_rate
        self.stats = StreamStats(started=time.monotonic())
        self._queue: asyncio.Queue[np.ndarray | _Timed | _End | _Failure] = asyncio.Queue(maxsize=lookahead)
        self._words: list[WordTiming] = []
        self._finished = False
        self._callbacks: list[Callable[[AudioStream], None]] = []
        self._max_samples: int | None = None
        self._task = asyncio.get_running_loop().create_task(_run_producer(producer, self._queue))

    def __aiter__(self) -> AudioStream:
        return self

    async def __anext__(self) -> np.ndarray:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        while isinstance(item, _Timed):
            self._words.extend(item.words)
            if len(item.samples):
                item = item.samples
            else:  # timings alone
                item = await self._queue.get()
        if isinstance(item, _End):
            self._finish(StreamOutcome.DONE)
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finish(StreamOutcome.FAILED)
            raise item.error
        if self.stats.first_chunk is None:
            self.stats.first_chunk = time.monotonic()
        self.stats.samples += len(item)
        if self._max_samples is not None and self.stats.samples > self._max_samples:
            self._task.cancel()
            self._finish(StreamOutcome.FAILED)
            raise AudioTooLong(f"the audio ran past {self._max_samples / self.sample_rate:.0f} s, far longer than its text takes to say")
        return item

    @property
    def words(self) -> Sequence[WordTiming]:
        """Word timings known so far, in spoken order: those that came with the chunks taken (or before the end).

        An engine delivers a word's timing with its audio or later, never after the stream ends; a
        consumer that keeps pace with playback reads the new ones after each chunk.
        """
        return self._words

    def limit(self, max_samples: int) -> None:
        """End the stream with :class:`AudioTooLong` once it would yield more than ``max_samples``."""
        self._max_samples = max_samples

    @property
    def cancelled(self) -> bool:
        return self._task.cancelled()

    def cancel(self) -> None:
        """Stop the work behind the stream and wake any waiting consumer."""
        if self._finished:
            return
        self._finish(StreamOutcome.CANCELLED)
        self._task.cancel()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_End())

    def add_done_callback(self, callback: Callable[[AudioStream], None]) -> None:
        self._callbacks.append(callback)

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AudioStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    def _finish(self, outcome: StreamOutcome) -> None:
        self._finished = True
        self.stats.finished = time.monotonic()
        self.stats.outcome = outcome
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def __del__(self) -> None:
        # A consumer that drops the stream without closing it must not leave
        # the producer blocked on a full queue forever.
        task = getattr(self, "_task", None)
        if task is not None and not task.done() and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)


async def _run_producer(producer: Producer, queue: asyncio.Queue) -> None:
    async def emit(samples: np.ndarray, words: Sequence[WordTiming] = ()) -> None:
        await queue.put(_Timed(samples, tuple(words)) if words else samples)

    try:
        await producer(emit)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # delivered to the consumer, which re-raises it
        await queue.put(_Failure(error))
    else:
        await queue.put(_End())


class Engine(ABC):
    """A loaded text-to-speech engine.

    Subclasses implement :meth:`start`, :meth:`close`, :attr:`capabilities`
    and :meth:`_produce`; :meth:`synthesize` validates the request first, so
    a bad request fails before any audio (and any HTTP header) is sent.
    """

    def __init__(self, *, max_text_chars: int = 4096) -> None:
        self.max_text_chars = max_text_chars
        self._ready = False

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @property
    def ready(self) -> bool:
        """True once the engine is loaded and has answered a first request."""
        return self._ready

    @abstractmethod
    async def start(self) -> None:
        """Load models and start workers; sets :attr:`ready` when done."""

    @abstractmethod
    async def close(self) -> None:
        """Stop all work and free resources."""

    async def probe(self) -> bool:
        """A cheap liveness check behind the health route."""
        return self._ready

    @property
    def busy(self) -> int:
        """Work in progress (busy workers, or sessions in the batch), for metrics."""
        return 0

    def synthesize(self, request: SynthesisRequest) -> AudioStream:
        """Validate ``request`` and start producing its audio."""
        if not self._ready:
            raise EngineUnavailable(f"engine '{self.capabilities.engine}' is not ready")
        self.validate(request)
        return AudioStream(self.capabilities.sample_rate, lambda emit: self._produce(request, emit))

    @abstractmethod
    async def _produce(self, request: SynthesisRequest, emit: Emit) -> None:
        """Make the audio for a validated request, awaiting ``emit`` per chunk."""

    def validate(self, request: SynthesisRequest) -> None:
        """Raise :class:`InvalidRequest` (with a message for the client) if ``request`` cannot be served."""
        caps = self.capabilities
        if request.mode not in caps.modes:
            supported = ", ".join(sorted(m.value for m in caps.modes))
            raise UnsupportedMode(
                f"mode '{request.mode.value}' is not supported by engine '{caps.engine}' "
                f"(model '{caps.model}'); supported modes: {supported}"
            )
        if request.mode is not Mode.VC:
            text = request.text.strip()
            if not text:
                raise InvalidRequest("text is empty")
            if not any(char.isalnum() for char in text):
                raise InvalidRequest("text has nothing to speak: punctuation, symbols and emoji alone make no audio")
            if len(text) > self.max_text_chars:
                raise InvalidRequest(
                    f"text is {len(text)} characters long; the limit is {self.max_text_chars}"
                )
        if not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise InvalidRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
        if not 0 <= request.seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be 0 (random) or a positive integer up to {MAX_SEED}")
        if request.saved_voice is not None:
            cloning = {Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.INSTRUCT2, Mode.VC} & caps.modes
            if not cloning:
                raise UnsupportedMode(
                    f"saved voice '{request.saved_voice.id}' is a cloned voice; engine '{caps.engine}' "
                    f"(model '{caps.model}') cannot clone voices"
                )
        elif request.mode in (Mode.SFT, Mode.INSTRUCT):
            self.resolve_voice(request.voice)
        has_prompt = request.prompt_audio is not None or request.saved_voice is not None
        needs_prompt = request.mode in (Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.INSTRUCT2, Mode.VC)
        if needs_prompt and not has_prompt:
            raise InvalidRequest(f"mode '{request.mode.value}' needs prompt audio or a saved voice")
        if request.mode is Mode.ZERO_SHOT and request.saved_voice is None and not request.prompt_text.strip():
            raise InvalidRequest("mode 'zero_shot' needs prompt_text, the transcript of the prompt audio")
        if request.mode in (Mode.INSTRUCT, Mode.INSTRUCT2) and not request.instruct_text.strip():
            raise InvalidRequest(f"mode '{request.mode.value}' needs instruct_text")
        if request.mode is Mode.VC and request.source_audio is None:
            raise InvalidRequest("mode 'vc' needs source audio")

    def resolve_voice(self, voice: str | None) -> str:
        """The built-in voice to use for ``voice`` (None means the default)."""
        caps = self.capabilities
        if voice is None or voice == "":
            if caps.default_voice is None:
                raise InvalidRequest(f"engine '{caps.engine}' has no default voice; name one")
            return caps.default_voice
        if voice not in caps.voices:
            raise UnknownVoice(f"unknown voice '{voice}'; available: {', '.join(caps.voices)}")
        return voice
