"""What the ElevenLabs and Cartesia dialects share: output formats, voices, and opening speech contexts.

Voice-agent frameworks (pipecat, LiveKit Agents) reach us through these two
dialects; each route module turns its provider's messages into calls on
:class:`~signaling.contexts.SpeechContext` and back. Voice ids are ours: a
built-in voice or one the caller saved.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect

from cosyvoice import EngineUnavailable, InvalidRequest, UnknownVoice
from cosyvoice.text import ClauseOptions
from gateway.admission import Overloaded, RateLimited
from gateway.auth import ApiKey, caller_of
from gateway.dependencies import get_services
from gateway.sessions import SessionFactory, SessionSpeech
from gateway.streaming import SEND_TIMEOUT
from gateway.synthesis import Synthesizer
from media.containers import StreamEncoder, open_encoder
from media.g711 import ulaw_encode
from media.pcm import to_int16, to_s16le
from media.resample import StreamResampler
from signaling.contexts import SpeechContext
from signaling.session import SessionLimits, TextTooLong, Transport, VoiceSettings

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 48000  # what telephony and studio audio use; resampling beyond is a mistake


class BadFormat(ValueError):
    """An output format we cannot produce."""


class Encoding(enum.Enum):
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"
    PCM_MULAW = "pcm_mulaw"
    MP3 = "mp3"


class Container(enum.Enum):
    RAW = "raw"
    WAV = "wav"
    MP3 = "mp3"


_RAW: dict[Encoding, tuple[Callable[[np.ndarray], bytes], str]] = {
    Encoding.PCM_S16LE: (to_s16le, "audio/pcm"),
    Encoding.PCM_F32LE: (lambda samples: samples.astype("<f4", copy=False).tobytes(), "audio/pcm"),
    Encoding.PCM_MULAW: (lambda samples: ulaw_encode(to_int16(samples)), "audio/basic"),
}


class _RawEncoder(StreamEncoder):
    """Headerless samples at the output rate, resampled from the engine's."""

    def __init__(self, input_rate: int, output_rate: int, encoding: Encoding) -> None:
        super().__init__(output_rate)
        self._convert, self.media_type = _RAW[encoding]
        self._resampler = StreamResampler(input_rate, output_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        return self._convert(self._resampler.process(samples))

    def finish(self) -> bytes:
        return self._convert(self._resampler.flush())


@dataclass(frozen=True)
class OutputFormat:
    container: Container
    encoding: Encoding
    sample_rate: int
    bitrate: int | None = None  # MP3 only

    def __post_init__(self) -> None:
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise BadFormat(f"sample rate {self.sample_rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        if (self.container is Container.MP3) != (self.encoding is Encoding.MP3):
            raise BadFormat("MP3 is both the container and the encoding")
        if self.container is Container.WAV and self.encoding is not Encoding.PCM_S16LE:
            raise BadFormat("WAV output is pcm_s16le")

    def encoder(self, input_rate: int) -> StreamEncoder:
        """A fresh encoder taking audio at ``input_rate``."""
        if self.container is Container.RAW:
            return _RawEncoder(input_rate, self.sample_rate, self.encoding)
        fmt = "wav" if self.container is Container.WAV else "mp3"
        return open_encoder(fmt, input_rate, bitrate=self.bitrate, output_rate=self.sample_rate)


_ELEVENLABS_FORMAT = re.compile(r"(pcm|ulaw|mp3)_(\d+)(?:_(\d+))?")


def elevenlabs_format(name: str) -> OutputFormat:
    """``pcm_24000``, ``ulaw_8000``, ``mp3_44100_128``...: ElevenLabs' ``output_format`` names."""
    match = _ELEVENLABS_FORMAT.fullmatch(name)
    if match is None:
        raise BadFormat(f"output_format '{name}' is not one of pcm_<rate>, ulaw_8000, mp3_<rate>_<kbps>")
    kind, rate, kbps = match.group(1), int(match.group(2)), match.group(3)
    if kind == "mp3":
        if kbps is None:
            raise BadFormat(f"output_format '{name}' needs a bitrate, e.g. mp3_44100_128")
        return OutputFormat(Container.MP3, Encoding.MP3, rate, int(kbps) * 1000)
    if kbps is not None or (kind == "ulaw" and rate != 8000):
        raise BadFormat(f"output_format '{name}' is not one of pcm_<rate>, ulaw_8000, mp3_<rate>_<kbps>")
    return OutputFormat(Container.RAW, Encoding.PCM_MULAW if kind == "ulaw" else Encoding.PCM_S16LE, rate)


def cartesia_format(fields: object) -> OutputFormat:
    """Cartesia's ``output_format`` object: ``container``, ``encoding``, ``sample_rate`` (and ``bit_rate`` for MP3)."""
    if not isinstance(fields, dict):
        raise BadFormat("output_format must be an object with container, encoding and sample_rate")
    try:
        container = Container(fields.get("container", "raw"))
        rate = fields.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise BadFormat("output_format.sample_rate must be an integer")
        if container is Container.MP3:
            bitrate = fields.get("bit_rate", 128000)
            if not isinstance(bitrate, int) or not 32000 <= bitrate <= 320000:
                raise BadFormat("output_format.bit_rate must be an integer from 32000 to 320000")
            return OutputFormat(container, Encoding.MP3, rate, bitrate)
        return OutputFormat(container, Encoding(fields.get("encoding")), rate)
    except ValueError as error:  # an unknown container or encoding name
        raise BadFormat(
            "output_format: container is raw, wav or mp3; encoding is pcm_s16le, pcm_f32le or pcm_mulaw"
        ) from error


def voice_for(synth: Synthesizer, voice_id: object) -> str:
    """Our voice id, checked: a built-in voice or one saved by the caller."""
    if isinstance(voice_id, str) and (voice_id in synth.engine.capabilities.voices or voice_id in synth.registry):
        return voice_id
    raise UnknownVoice(f"voice '{voice_id}' does not exist; see GET /v1/voices")


@dataclass
class ContextFactory:
    """Opens speech contexts for one connection: its caller's voices, the server's clause and text limits."""

    speech: SessionSpeech
    clause_options: ClauseOptions
    limits: SessionLimits
    sessions: SessionFactory
    owner: ApiKey | None

    @classmethod
    def for_connection(cls, connection: HTTPConnection) -> ContextFactory:
        services = get_services(connection)
        sessions = services.session_factory
        synth = services.synthesizer.for_caller(caller_of(connection))
        speech = SessionSpeech(synth, Transport.WEBSOCKET)
        owner = connection.scope.get("state", {}).get("api_key")
        return cls(speech, sessions.clause_options, sessions.limits, sessions, owner)

    def admit(self) -> Callable[[], None]:
        """Admit the socket as one WebSocket session (refused at capacity, beyond its key's sessions, or while the
        server shuts down; HTTP requests are refused by their synthesis slot). Returns its release."""
        return self.sessions.hold_socket(self.owner)

    @property
    def synth(self) -> Synthesizer:
        return self.speech.synth

    def voice(self, voice_id: object, speed: object = None) -> VoiceSettings:
        """Voice settings for ``voice_id`` at ``speed``; raises ``UnknownVoice`` or ``InvalidRequest``."""
        if speed is None:
            speed = 1.0
        if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.5 <= speed <= 2.0:
            raise InvalidRequest("speed must be a number from 0.5 to 2.0")
        voice = VoiceSettings(voice=voice_for(self.synth, voice_id), speed=float(speed))
        self.speech.check(voice)
        return voice

    def open(self, voice: VoiceSettings, output_rate: int) -> SpeechContext:
        return SpeechContext(
            self.speech, voice, output_rate, clause_options=self.clause_options, limits=self.limits
        )


class Malformed(ValueError):
    """A client message that is not what the dialect allows (not JSON, not an object, a bad field)."""


class AgentSocket:
    """One client's WebSocket: its contexts, each with a task sending its output, and one lock for sending.

    Whatever ends the socket, :meth:`close_all` cancels every context, so no engine work outlives it.
    """

    def __init__(self, websocket: WebSocket, max_contexts: int) -> None:
        self.websocket = websocket
        self.max_contexts = max_contexts
        self.contexts: dict[str, SpeechContext] = {}
        self._pumps: dict[str, asyncio.Task] = {}
        self._sending = asyncio.Lock()

    async def send(self, payload: dict) -> None:
        """One JSON message; a client that reads nothing for ``SEND_TIMEOUT`` raises ``TimeoutError``."""
        async with self._sending, asyncio.timeout(SEND_TIMEOUT):
            await self.websocket.send_text(json.dumps(payload, ensure_ascii=False))

    async def receive(self, timeout: float) -> dict:
        """The next message as a JSON object; ``TimeoutError`` after ``timeout`` s of silence,
        ``WebSocketDisconnect`` when the client left, :class:`Malformed` for anything but a JSON object."""
        async with asyncio.timeout(timeout):
            message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            raise Malformed("messages are JSON text, not binary")
        try:
            payload = json.loads(text)
        except ValueError as error:
            raise Malformed(f"a message is not valid JSON: {error}") from error
        if not isinstance(payload, dict):
            raise Malformed("a message is a JSON object")
        return payload

    def add(self, key: str, context: SpeechContext, pump: Callable[[SpeechContext], Awaitable[None]]) -> None:
        """Start sending ``context``'s output with ``pump``; raises ``TooManyContexts`` at the limit."""
        if len(self.contexts) >= self.max_contexts:
            context.cancel()
            raise TooManyContexts(f"at most {self.max_contexts} contexts at once on one connection")
        self.contexts[key] = context
        task = asyncio.get_running_loop().create_task(pump(context), name=f"context {key}")
        self._pumps[key] = task
        task.add_done_callback(lambda _: self._forget(key, task))

    def cancel(self, key: str) -> None:
        """Stop a context at once: its engine work and whatever it had yet to send."""
        context, pump = self.contexts.pop(key, None), self._pumps.pop(key, None)
        if context is not None:
            context.cancel()
        if pump is not None:
            pump.cancel()

    def close_all(self) -> None:
        for key in list(self.contexts):
            self.cancel(key)

    async def wait_idle(self) -> None:
        """Until every context has sent all of its output."""
        while self._pumps:
            await asyncio.wait(list(self._pumps.values()))

    def _forget(self, key: str, task: asyncio.Task) -> None:
        if self._pumps.get(key) is task:
            del self._pumps[key]
            context = self.contexts.pop(key, None)
            if context is not None:
                context.cancel()
        if not task.cancelled() and task.exception() is not None:
            log.warning("context %s: sending failed: %s", key, task.exception())


class TooManyContexts(Exception):
    pass


class Refusal(enum.Enum):
    """Why a voice agent's request was refused, the same in both dialects; each names it in its own words.

    ``status`` is the HTTP status both dialects answer with, unless a dialect's :class:`ErrorCodes` says
    otherwise. Not :data:`gateway.errors.STATUS`: these APIs answer an unknown voice with 404 and a full
    server with 429, where our own API answers 400 and 503.
    """

    UNKNOWN_VOICE = ("unknown voice", 404)
    BAD_FORMAT = ("bad output format", 400)
    TEXT_TOO_LONG = ("text too long", 413)
    TOO_MANY_CONTEXTS = ("too many contexts", 429)
    UNAVAILABLE = ("engine unavailable", 503)
    BUSY = ("no capacity", 429)
    INVALID = ("invalid request", 400)  # anything else a request can fail with

    def __init__(self, label: str, status: int) -> None:
        self.label, self.status = label, status


# Errors to refusals, first match wins; whatever is not here is ``Refusal.INVALID``.
REFUSALS: tuple[tuple[type[Exception], Refusal], ...] = (
    (UnknownVoice, Refusal.UNKNOWN_VOICE),
    (BadFormat, Refusal.BAD_FORMAT),
    (TextTooLong, Refusal.TEXT_TOO_LONG),
    (TooManyContexts, Refusal.TOO_MANY_CONTEXTS),
    (EngineUnavailable, Refusal.UNAVAILABLE),
    (Overloaded, Refusal.BUSY),
    (RateLimited, Refusal.BUSY),
)


def refusal_of(error: Exception) -> Refusal:
    return next((refusal for kind, refusal in REFUSALS if isinstance(error, kind)), Refusal.INVALID)


@dataclass(frozen=True)
class ErrorCodes:
    """One dialect's error code for each refusal, and its HTTP status where it differs from the refusal's."""

    codes: Mapping[Refusal, str]
    statuses: Mapping[Refusal, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if missing := set(Refusal) - set(self.codes):
            raise ValueError(f"no error code for {sorted(refusal.name for refusal in missing)}")

    def of(self, error: Exception) -> tuple[str, int]:
        """The code and HTTP status that answer ``error``."""
        refusal = refusal_of(error)
        return self.codes[refusal], self.statuses.get(refusal, refusal.status)
