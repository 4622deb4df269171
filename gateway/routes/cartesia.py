"""The Cartesia text-to-speech API under ``/cartesia``: what pipecat's and LiveKit's Cartesia services speak.

Clients take a base URL (``ws://host:8000/cartesia``, ``http://host:8000/cartesia``). The WebSocket
``/tts/websocket`` takes generation requests on contexts (``context_id``; ``continue`` for more text to
come; ``flush``; ``{"context_id", "cancel": true}`` stops a context and its engine work at once) and
answers ``chunk``, ``timestamps`` (``add_timestamps``: words with start and end in seconds from the
context's first sample), ``flush_done``, ``done`` and ``error`` messages. HTTP: ``/tts/bytes`` (the
audio) and ``/tts/sse`` (the same messages as server-sent events). The key comes as ``X-API-Key``,
``Authorization: Bearer`` or, on the WebSocket, the ``api_key`` query parameter; ``Cartesia-Version``
is accepted whatever its date. Voice ids (``{"mode": "id", "id": ...}``) are ours.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from cosyvoice import AudioStream, SynthesisError, UnknownVoice, WordTiming
from gateway.admission import Overloaded, RateLimited
from gateway.audio import AudioStreamingResponse, StreamEndingResponse
from gateway.auth import accept
from gateway.metrics import RejectReason
from gateway.voice_agents import (
    AgentSocket,
    BadFormat,
    ContextFactory,
    ErrorCodes,
    Malformed,
    OutputFormat,
    Refusal,
    TooManyContexts,
    cartesia_format,
)
from signaling.closecodes import CloseCode
from signaling.contexts import AudioOut, ContextClosed, Failed, Finished, Flushed, SpeechContext, WordsOut
from signaling.session import TextTooLong, VoiceSettings

router = APIRouter(prefix="/cartesia", tags=["Cartesia"])

IDLE_TIMEOUT_S = 300.0  # Cartesia closes a socket that sent nothing for 5 minutes
MAX_CONTEXTS = 32  # "dozens of concurrent generations" on one socket, as Cartesia's guide puts it
PARTIAL, OK = 206, 200  # the status codes Cartesia puts in its messages


class CartesiaError(Exception):
    """An error with Cartesia's ``error_code`` and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


ERROR_CODES = ErrorCodes({
    Refusal.UNKNOWN_VOICE: "voice_not_found",
    Refusal.BAD_FORMAT: "invalid_output_format",
    Refusal.TEXT_TOO_LONG: "transcript_too_long",
    Refusal.TOO_MANY_CONTEXTS: "too_many_requests",
    Refusal.UNAVAILABLE: "service_unavailable",
    Refusal.BUSY: "too_many_requests",
    Refusal.INVALID: "invalid_request",
})


def _classify(error: Exception) -> CartesiaError:
    if isinstance(error, CartesiaError):
        return error
    code, status = ERROR_CODES.of(error)
    return CartesiaError(code, str(error), status)


def _error_body(error: CartesiaError, context_id: str | None) -> dict:
    """Both of Cartesia's error shapes: ``error`` (older API versions), ``title``/``message``/``error_code``."""
    return {
        "type": "error", "done": True, "status_code": error.status, "context_id": context_id,
        "error": str(error), "title": error.code.replace("_", " "), "message": str(error), "error_code": error.code,
    }  # fmt: skip


@dataclass(frozen=True)
class _Input:
    """One generation request's text and flags, checked."""

    transcript: str
    timestamps: bool
    more: bool  # ``continue``: more transcript will follow on this context
    flush: bool


@dataclass(frozen=True)
class _Setup:
    """How a context speaks: fixed by its first request."""

    voice: VoiceSettings
    format: OutputFormat


def _input(body: dict) -> _Input:
    transcript = body.get("transcript", "")
    if not isinstance(transcript, str):
        raise Malformed("transcript must be a string")
    flags = [body.get(name, False) for name in ("add_timestamps", "continue", "flush")]
    if not all(isinstance(flag, bool) for flag in flags):
        raise Malformed("add_timestamps, continue and flush are true or false")
    return _Input(transcript, *flags)


def _voice_id(body: dict) -> str:
    voice = body.get("voice")
    if not isinstance(voice, dict) or voice.get("mode", "id") != "id" or not isinstance(voice.get("id"), str):
        raise CartesiaError("invalid_voice", 'voice is {"mode": "id", "id": "<one of our voice ids>"}')
    return voice["id"]


def _setup(factory: ContextFactory, body: dict) -> _Setup:
    config = body.get("generation_config") or {}
    if not isinstance(config, dict):
        raise Malformed("generation_config must be an object")
    voice = factory.voice(_voice_id(body), config.get("speed"))
    if "output_format" not in body:
        raise BadFormat("output_format is required: container, encoding, sample_rate")
    return _Setup(voice, cartesia_format(body["output_format"]))


# The WebSocket.


@router.websocket("/tts/websocket")
async def tts_websocket(websocket: WebSocket) -> None:
    await _Connection(websocket).run()


class _Connection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.socket = AgentSocket(websocket, MAX_CONTEXTS)
        self.factory: ContextFactory | None = None
        self.ended: set[str] = set()  # contexts whose input ended (continue: false) or were cancelled

    async def run(self) -> None:
        await accept(self.websocket)
        self.factory = ContextFactory.for_connection(self.websocket)
        try:
            release = self.factory.admit()
        except (Overloaded, RateLimited) as error:
            draining = isinstance(error, Overloaded) and error.reason is RejectReason.SHUTTING_DOWN
            refusal = CartesiaError("shutting_down", str(error), 503) if draining else _classify(error)
            await self.socket.send(_error_body(refusal, None))
            await self.websocket.close(CloseCode.TRY_AGAIN_LATER, reason=str(error)[:120])
            return
        try:
            while True:
                try:
                    message = await self.socket.receive(IDLE_TIMEOUT_S)
                except TimeoutError:
                    message = f"no message for {IDLE_TIMEOUT_S:g} s; the connection is closed"
                    error = CartesiaError("idle_timeout", message, 408)
                    await self.socket.send(_error_body(error, None))
                    await self.websocket.close(CloseCode.POLICY_VIOLATION, reason=str(error)[:120])
                    return
                except Malformed as error:
                    await self.socket.send(_error_body(_classify(error), None))
                    continue
                await self._handle(message)
        except WebSocketDisconnect:
            pass
        except (TimeoutError, OSError, RuntimeError):
            pass  # the client stopped reading or left mid-send
        finally:
            release()
            self.socket.close_all()

    async def _handle(self, message: dict) -> None:
        key = message.get("context_id")
        if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
            error = CartesiaError("invalid_request", "context_id must be a non-empty string of at most 256 characters")
            await self.socket.send(_error_body(error, None))
            return
        if message.get("cancel") is True:
            if key is not None:
                self.ended.add(key)
                self.socket.cancel(key)  # nothing more is sent for it
            return
        key = key or "ctx_" + secrets.token_hex(8)
        try:
            await self._generate(key, message)
        except (Malformed, CartesiaError, BadFormat, SynthesisError, TextTooLong, TooManyContexts) as error:
            await self.socket.send(_error_body(_classify(error), key))

    async def _generate(self, key: str, message: dict) -> None:
        assert self.factory is not None
        if key in self.ended:
            raise CartesiaError("context_closed", f"context '{key}' has ended; use a new context_id")
        given = _input(message)
        context = self.socket.contexts.get(key)
        if context is None:
            setup = _setup(self.factory, message)
            context = self.factory.open(setup.voice, setup.format.sample_rate)
            self.socket.add(key, context, lambda ctx: self._pump(key, ctx, setup.format, given.timestamps))
        elif "voice" in message and _voice_id(message) != context.voice.voice:
            raise CartesiaError("invalid_request", "inputs on one context keep its voice; use a new context_id")
        try:
            if given.transcript:
                context.say(given.transcript)
            if given.flush:
                context.flush()
            if not given.more:
                self.ended.add(key)
                context.close_input()
        except ContextClosed as error:
            raise CartesiaError("context_closed", f"context '{key}' has ended") from error

    async def _pump(self, key: str, context: SpeechContext, fmt: OutputFormat, timestamps: bool) -> None:
        encoder = fmt.encoder(context.output_rate)
        flush_id = 0
        started = time.monotonic()
        async for piece in context:
            if isinstance(piece, AudioOut):
                if data := encoder.encode(piece.samples):
                    step_ms = round((time.monotonic() - started) * 1000)
                    await self.socket.send(_chunk(data, key, flush_id, step_ms))
                    started = time.monotonic()
            elif isinstance(piece, WordsOut):
                if timestamps:
                    await self.socket.send(_timestamps(piece.words, key))
            elif isinstance(piece, Flushed):
                flush_id = piece.number
                await self.socket.send({"type": "flush_done", "done": False, "flush_done": True,
                                        "flush_id": piece.number, "status_code": PARTIAL,
                                        "context_id": key})  # fmt: skip
            elif isinstance(piece, Finished):
                if tail := encoder.finish():
                    await self.socket.send(_chunk(tail, key, flush_id, 0))
                await self.socket.send({"type": "done", "done": True, "status_code": PARTIAL, "context_id": key})
            elif isinstance(piece, Failed):
                await self.socket.send(_error_body(CartesiaError("synthesis_failed", piece.message, 500), key))


def _chunk(data: bytes, key: str | None, flush_id: int, step_ms: int) -> dict:
    return {"type": "chunk", "data": base64.b64encode(data).decode(), "done": False, "status_code": PARTIAL,
            "step_time": step_ms, "flush_id": flush_id, "context_id": key}  # fmt: skip


def _timestamps(words: tuple[WordTiming, ...] | list[WordTiming], key: str | None) -> dict:
    return {
        "type": "timestamps", "done": False, "status_code": PARTIAL, "context_id": key,
        "word_timestamps": {
            "words": [word.text for word in words],
            "start": [round(word.start_s, 3) for word in words],
            "end": [round(word.end_s, 3) for word in words],
        },
    }  # fmt: skip


# HTTP.


async def _http_request(request: Request) -> tuple[AudioStream, _Input, _Setup]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise Malformed("the body is not valid JSON") from error
    if not isinstance(body, dict):
        raise Malformed("the body is a JSON object")
    factory = ContextFactory.for_connection(request)
    given, setup = _input(body), _setup(factory, body)
    if not given.transcript.strip():
        raise CartesiaError("invalid_request", "transcript is empty")
    return await factory.synth.open(given.transcript, setup.voice), given, setup


_HTTP_ERRORS = (CartesiaError, UnknownVoice, BadFormat, SynthesisError, Malformed, Overloaded, RateLimited)


def _error_response(error: Exception) -> JSONResponse:
    shaped = _classify(error)
    body = _error_body(shaped, None)
    return JSONResponse({k: body[k] for k in ("error", "title", "message", "error_code")}, status_code=shaped.status)


@router.post("/tts/bytes", response_class=Response)
async def tts_bytes(request: Request) -> Response:
    try:
        stream, _, setup = await _http_request(request)
    except _HTTP_ERRORS as error:
        return _error_response(error)
    return AudioStreamingResponse(stream, setup.format.encoder(stream.sample_rate))


@router.post("/tts/sse", response_class=Response)
async def tts_sse(request: Request) -> Response:
    """The WebSocket's messages for one transcript, as server-sent events."""
    try:
        stream, given, setup = await _http_request(request)
    except _HTTP_ERRORS as error:
        return _error_response(error)
    return StreamEndingResponse(
        stream, _events(stream, setup.format, given.timestamps),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
    )


async def _events(stream: AudioStream, fmt: OutputFormat, timestamps: bool) -> AsyncIterator[bytes]:
    encoder = fmt.encoder(stream.sample_rate)
    taken = 0

    def event(payload: dict) -> bytes:
        return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    def timed() -> list[bytes]:
        nonlocal taken
        words, taken = list(stream.words[taken:]), len(stream.words)
        return [event(_timestamps(words, None))] if words and timestamps else []

    async for samples in stream:
        if data := encoder.encode(samples):
            yield event(_chunk(data, None, 0, 0))
        for line in timed():
            yield line
    if tail := encoder.finish():
        yield event(_chunk(tail, None, 0, 0))
    for line in timed():
        yield line
    yield event({"type": "done", "done": True, "status_code": OK, "context_id": None})
