"""The ElevenLabs text-to-speech API under ``/elevenlabs``: what pipecat's and LiveKit's ElevenLabs services speak.

Clients take a base URL (``ws://host:8000/elevenlabs``, ``http://host:8000/elevenlabs``). WebSockets:
``/v1/text-to-speech/{voice_id}/stream-input`` (one context) and ``/multi-stream-input`` (contexts by
``context_id``); HTTP: ``/v1/text-to-speech/{voice_id}``, ``/stream``, ``/with-timestamps``,
``/stream/with-timestamps``. Voice ids are ours (built-in or saved). The API key comes as the ``xi-api-key``
header, or in the first message's ``xi_api_key`` (or ``authorization``) field.

Alignments (``alignment`` and, identical here, ``normalizedAlignment``) give characters with start times
and durations in ms. On the WebSocket each alignment's times count from where the previous one ended
(pipecat adds them up), or with ``sync_alignment=true`` (LiveKit) from the context's start; alignments
may come in messages of their own, after the audio they describe. ``close_context`` speaks what was flushed and
drops text sent after the last
flush (an interrupted reply: the engine stops at once), then ``isFinal``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from cosyvoice import AudioStream, SynthesisError, UnknownVoice, WordTiming
from cosyvoice.timing import char_spans
from gateway.admission import Overloaded, RateLimited
from gateway.audio import AudioStreamingResponse, StreamEndingResponse, collect_audio
from gateway.auth import accept, authenticate_deferred
from gateway.voice_agents import (
    AgentSocket,
    BadFormat,
    ContextFactory,
    ErrorCodes,
    Malformed,
    OutputFormat,
    Refusal,
    TooManyContexts,
    elevenlabs_format,
)
from signaling.closecodes import CloseCode
from signaling.contexts import AudioOut, ContextClosed, Failed, Finished, Flushed, SpeechContext, WordsOut
from signaling.session import TextTooLong, VoiceSettings

router = APIRouter(prefix="/elevenlabs", tags=["ElevenLabs"])

DEFAULT_FORMAT = "mp3_44100_128"
DEFAULT_INACTIVITY_S = 20  # ElevenLabs' own default and bounds for ``inactivity_timeout``
MAX_INACTIVITY_S = 180
MAX_CONTEXTS = 5  # ElevenLabs' limit on one multi-stream connection
SINGLE = "default"  # the one context of stream-input


class ElevenLabsError(Exception):
    """An error with ElevenLabs' ``status`` code name (``detail.status`` over HTTP, ``error`` on a socket)."""

    def __init__(self, status: str, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.status, self.http_status = status, http_status


ERROR_CODES = ErrorCodes(
    {
        Refusal.UNKNOWN_VOICE: "voice_not_found",
        Refusal.BAD_FORMAT: "invalid_output_format",
        Refusal.TEXT_TOO_LONG: "text_too_long",
        Refusal.TOO_MANY_CONTEXTS: "max_active_conversations",
        Refusal.UNAVAILABLE: "service_unavailable",
        Refusal.BUSY: "too_many_concurrent_requests",
        Refusal.INVALID: "invalid_request",
    },
    statuses={Refusal.TOO_MANY_CONTEXTS: 400},  # a bad request to ElevenLabs, not a busy server
)


def _classify(error: Exception) -> ElevenLabsError:
    if isinstance(error, ElevenLabsError):
        return error
    code, status = ERROR_CODES.of(error)
    return ElevenLabsError(code, str(error), status)


# The WebSockets.


@router.websocket("/v1/text-to-speech/{voice_id}/stream-input")
async def stream_input(websocket: WebSocket, voice_id: str) -> None:
    await _Connection(websocket, voice_id, multi=False).run()


@router.websocket("/v1/text-to-speech/{voice_id}/multi-stream-input")
async def multi_stream_input(websocket: WebSocket, voice_id: str) -> None:
    await _Connection(websocket, voice_id, multi=True).run()


class _Connection:
    """One ElevenLabs socket: messages in, each context's audio and alignment out."""

    def __init__(self, websocket: WebSocket, voice_id: str, *, multi: bool) -> None:
        self.websocket = websocket
        self.voice_id = voice_id
        self.multi = multi
        self.socket = AgentSocket(websocket, MAX_CONTEXTS if multi else 1)
        self.factory: ContextFactory | None = None
        self.format: OutputFormat | None = None
        self.closed_contexts: set[str] = set()
        self.voice: VoiceSettings | None = None  # set by the first message, once its key is known
        self.first = True
        self.release: Callable[[], None] = lambda: None  # the socket's hold on a WebSocket session, once admitted

    async def run(self) -> None:
        await accept(self.websocket)
        try:
            query = self.websocket.query_params
            self.format = elevenlabs_format(query.get("output_format", DEFAULT_FORMAT))
            inactivity = _inactivity(query.get("inactivity_timeout"))
            while True:
                try:
                    message = await self.socket.receive(inactivity)
                except TimeoutError:
                    raise ElevenLabsError(
                        "input_timeout_exceeded", f"no message for {inactivity} s; the connection is closed"
                    ) from None
                if await self._handle(message):
                    break
            await self.websocket.close(1000)
        except (WebSocketDisconnect, TimeoutError, OSError, RuntimeError):
            pass  # the client left, or stopped reading what we sent
        except (Malformed, ElevenLabsError, UnknownVoice, BadFormat, SynthesisError, Overloaded, RateLimited) as error:
            await self._fail(_classify(error))
        finally:
            self.release()
            self.socket.close_all()

    async def _handle(self, message: dict) -> bool:
        """Act on one message; True when the socket is done."""
        if self.first:
            self.first = False
            await self._authenticate(message)
            self.factory = ContextFactory.for_connection(self.websocket)
            self.release = self.factory.admit()
            self.voice = self.factory.voice(self.voice_id, _speed(message.get("voice_settings")))
            _check_generation_config(message.get("generation_config"))
        if self.multi and message.get("close_socket") is True:
            return True
        key = self._key(message)
        text = message.get("text")
        if text is not None and not isinstance(text, str):
            raise Malformed("text must be a string")
        if self.multi and message.get("close_context") is True:
            await self._close_context(key)
            return False
        if not self.multi and text == "" and message.get("flush") is not True:  # end of input: the rest, isFinal, close
            context = self.socket.contexts.get(key) or self._open(key)
            context.close_input()
            await self.socket.wait_idle()
            return True
        if text in (None, "") and not message.get("flush"):
            return False  # a keep-alive (multi: {"text": ""}), or settings alone
        if key in self.closed_contexts:
            await self._context_error(key, "context_closed", f"context '{key}' is closed")
            return False
        context = self.socket.contexts.get(key) or self._open(key)
        try:
            if text and not (text == " " and not context.text):  # the initial " " only opens the context
                context.say(text)
            if message.get("flush") is True:
                context.flush()
        except TextTooLong as error:
            raise _classify(error) from error
        except ContextClosed:
            await self._context_error(key, "context_closed", f"context '{key}' is closed")
        return False

    def _key(self, message: dict) -> str:
        if not self.multi:
            return SINGLE
        key = message.get("context_id", SINGLE)
        if not isinstance(key, str) or not key or len(key) > 256:
            raise Malformed("context_id must be a non-empty string of at most 256 characters")
        return key

    def _open(self, key: str) -> SpeechContext:
        assert self.factory is not None and self.format is not None and self.voice is not None
        context = self.factory.open(self.voice, self.format.sample_rate)
        try:
            self.socket.add(key, context, lambda ctx: self._pump(key, ctx))
        except TooManyContexts as error:
            raise _classify(error) from error
        return context

    async def _close_context(self, key: str) -> None:
        context = self.socket.contexts.get(key)
        if context is None or context.input_closed:
            status = "context_closed" if key in self.closed_contexts else "context_not_found"
            state = "already closed" if status == "context_closed" else "not open"
            await self._context_error(key, status, f"context '{key}' is {state}")
            return
        self.closed_contexts.add(key)
        context.close_input(drop_unflushed=True)

    async def _pump(self, key: str, context: SpeechContext) -> None:
        assert self.format is not None
        encoder = self.format.encoder(context.output_rate)
        alignment = _AlignmentClock(from_start=self.websocket.query_params.get("sync_alignment") == "true")
        context_field = {"contextId": key} if self.multi else {}
        async for piece in context:
            if isinstance(piece, AudioOut):
                data = encoder.encode(piece.samples)
                if data:
                    await self.socket.send({"audio": _b64(data), "isFinal": None, **_alignments(None), **context_field})
            elif isinstance(piece, WordsOut):
                await self._send_alignment(alignment.advance(context.text, context.words), context_field)
            elif isinstance(piece, Finished):
                tail = encoder.finish()
                end_s = context.audio_samples / context.output_rate
                aligned = alignment.advance(context.text, context.words, end_s=end_s)
                if tail or aligned:
                    await self.socket.send(
                        {"audio": _b64(tail), "isFinal": None, **_alignments(aligned), **context_field}
                    )
                await self.socket.send({"isFinal": True, **context_field})
            elif isinstance(piece, Failed):
                await self._context_error(key, "synthesis_failed", piece.message)
            elif isinstance(piece, Flushed):
                pass  # ElevenLabs says nothing on a flush: the audio is the answer

    async def _send_alignment(self, aligned: dict | None, context_field: dict) -> None:
        if aligned:
            await self.socket.send({"audio": "", "isFinal": None, **_alignments(aligned), **context_field})

    async def _authenticate(self, message: dict) -> None:
        presented = message.get("xi_api_key") or message.get("authorization")
        if presented is not None and not isinstance(presented, str):
            raise Malformed("xi_api_key must be a string")
        if presented and presented.lower().startswith("bearer "):
            presented = presented[7:].strip()
        if not authenticate_deferred(self.websocket, presented):
            message = "missing or invalid API key: the xi-api-key header or xi_api_key field"
            raise ElevenLabsError("invalid_api_key", message, 401)

    async def _context_error(self, key: str, status: str, message: str) -> None:
        if self.multi:
            await self.socket.send({"error": status, "message": message, "code": 1008, "contextId": key})
        else:
            raise ElevenLabsError(status, message)

    async def _fail(self, error: ElevenLabsError) -> None:
        try:
            await self.socket.send({"error": error.status, "message": str(error), "code": 1008})
            await self.websocket.close(CloseCode.POLICY_VIOLATION, reason=str(error)[:120])
        except (RuntimeError, OSError, TimeoutError, WebSocketDisconnect):
            pass  # the client left first


def _inactivity(value: str | None) -> float:
    if value is None:
        return DEFAULT_INACTIVITY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not 0 < seconds <= MAX_INACTIVITY_S:
        raise ElevenLabsError("invalid_request", f"inactivity_timeout is a number of seconds up to {MAX_INACTIVITY_S}")
    return seconds


def _speed(settings: object) -> object:
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise Malformed("voice_settings must be an object")
    return settings.get("speed")


def _check_generation_config(config: object) -> None:
    """Accepted and checked; our clause splitter decides when to generate (like ElevenLabs' ``auto_mode``)."""
    if config is None:
        return
    schedule = config.get("chunk_length_schedule") if isinstance(config, dict) else None
    if not isinstance(config, dict) or (schedule is not None and not (
        isinstance(schedule, list) and all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in schedule)
    )):  # fmt: skip
        raise Malformed("generation_config.chunk_length_schedule must be a list of numbers")


# Alignments.


@dataclass
class _AlignmentClock:
    """Character alignments in pieces, in whole ms (so a client adding them up never drifts).

    ElevenLabs' clients read the times two ways: pipecat counts each piece from where the one before
    ended and adds them up; LiveKit, which asks for ``sync_alignment=true``, reads them as times from
    the context's start (``from_start``). Each gets the times it reads correctly.
    """

    from_start: bool = False
    chars: int = 0  # characters aligned so far
    clock_ms: int = 0  # where the last piece ended

    def advance(self, text: str, words: Sequence[WordTiming], end_s: float | None = None) -> dict | None:
        """The next piece: characters up to the last timed word's end (all of ``text`` with ``end_s``)."""
        upto = len(text) if end_s is not None else (words[-1].char_end if words else 0)
        if upto <= self.chars:
            return None
        clock_s = self.clock_ms / 1000
        fresh = [w.shifted(-clock_s, -self.chars) for w in words if w.char_start >= self.chars and w.char_end <= upto]
        spans = char_spans(text[self.chars : upto], fresh, None if end_s is None else end_s - clock_s)
        starts = [self.clock_ms + round(max(0.0, start) * 1000) for start, _ in spans]
        ends = [self.clock_ms + round(max(0.0, end) * 1000) for _, end in spans]
        piece = {
            "chars": list(text[self.chars : upto]),
            "charStartTimesMs": starts if self.from_start else [start - self.clock_ms for start in starts],
            "charDurationsMs": [max(0, end - start) for start, end in zip(starts, ends, strict=True)],
        }
        self.chars, self.clock_ms = upto, max(self.clock_ms, ends[-1])
        return piece


def _alignments(aligned: dict | None) -> dict:
    return {"normalizedAlignment": aligned, "alignment": aligned}


# HTTP.


async def _http_request(request: Request, voice_id: str) -> tuple[AudioStream, OutputFormat, str]:
    """The stream, format and text of an HTTP request; raises what :func:`_error_response` shapes."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise ElevenLabsError("invalid_request", "the body is not valid JSON") from error
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
        raise ElevenLabsError("invalid_request", "the body is a JSON object with a non-empty 'text'")
    fmt = elevenlabs_format(request.query_params.get("output_format", DEFAULT_FORMAT))
    factory = ContextFactory.for_connection(request)
    voice = factory.voice(voice_id, _speed(body.get("voice_settings")))
    return await factory.synth.open(body["text"], voice), fmt, body["text"]


def _error_response(error: Exception) -> JSONResponse:
    shaped = _classify(error)
    return JSONResponse({"detail": {"status": shaped.status, "message": str(shaped)}}, status_code=shaped.http_status)


_HTTP_ERRORS = (ElevenLabsError, UnknownVoice, BadFormat, SynthesisError, Malformed, Overloaded, RateLimited)


@router.post("/v1/text-to-speech/{voice_id}", response_class=Response)
@router.post("/v1/text-to-speech/{voice_id}/stream", response_class=Response)
async def speech(voice_id: str, request: Request) -> Response:
    try:
        stream, fmt, _ = await _http_request(request, voice_id)
    except _HTTP_ERRORS as error:
        return _error_response(error)
    return AudioStreamingResponse(stream, fmt.encoder(stream.sample_rate))


@router.post("/v1/text-to-speech/{voice_id}/with-timestamps")
async def speech_with_timestamps(voice_id: str, request: Request) -> Response:
    """One JSON object: all the audio, and the whole text's alignment in seconds."""
    try:
        stream, fmt, text = await _http_request(request, voice_id)
    except _HTTP_ERRORS as error:
        return _error_response(error)
    samples = await collect_audio(stream, request)
    if samples is None:
        return Response(status_code=499)  # the client left; nobody reads this
    encoder = fmt.encoder(stream.sample_rate)
    audio = encoder.encode(samples) + encoder.finish()
    aligned = _seconds_alignment(text, 0, len(text), stream.words, len(samples) / stream.sample_rate)
    return JSONResponse({"audio_base64": _b64(audio), "alignment": aligned, "normalized_alignment": aligned})


@router.post("/v1/text-to-speech/{voice_id}/stream/with-timestamps", response_class=Response)
async def stream_with_timestamps(voice_id: str, request: Request) -> Response:
    """Newline-delimited JSON: each piece of audio with the alignment of the characters timed so far."""
    try:
        stream, fmt, text = await _http_request(request, voice_id)
    except _HTTP_ERRORS as error:
        return _error_response(error)
    return StreamEndingResponse(stream, _timestamped_lines(stream, fmt, text), media_type="application/x-ndjson")


async def _timestamped_lines(stream: AudioStream, fmt: OutputFormat, text: str) -> AsyncIterator[bytes]:
    """ElevenLabs' stream/with-timestamps lines; times count from the start of the audio."""
    encoder = fmt.encoder(stream.sample_rate)
    aligned_chars, samples = 0, 0

    def line(audio: bytes, end_s: float | None = None) -> bytes:
        nonlocal aligned_chars
        words = stream.words
        upto = len(text) if end_s is not None else (words[-1].char_end if words else 0)
        aligned = _seconds_alignment(text, aligned_chars, upto, words, end_s) if upto > aligned_chars else None
        aligned_chars = max(aligned_chars, upto)
        payload = {"audio_base64": _b64(audio), "alignment": aligned, "normalized_alignment": aligned}
        return (json.dumps(payload, ensure_ascii=False) + "\n").encode()

    async for chunk in stream:
        samples += len(chunk)
        yield line(encoder.encode(chunk))
    yield line(encoder.finish(), end_s=samples / stream.sample_rate)


def _seconds_alignment(text: str, first: int, last: int, words: Sequence[WordTiming], end_s: float | None) -> dict:
    """Characters ``text[first:last]`` with start and end times in seconds (the HTTP routes' shape)."""
    spans = char_spans(text[:last], [w for w in words if w.char_end <= last], end_s)[first:last]
    return {
        "characters": list(text[first:last]),
        "character_start_times_seconds": [round(start, 3) for start, _ in spans],
        "character_end_times_seconds": [round(end, 3) for _, end in spans],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
