"""Seed server C: the unified v1 API (``/v1/speakers``, ``/v1/tts``, ``/v1/tts/stream``, ``/ws/v1/tts``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, ValidationError
from starlette.websockets import WebSocketDisconnect

from cosyvoice import Audio, AudioStream, Mode, SpeechParams, SynthesisError
from gateway.audio import AudioStreamingResponse, collect_audio
from gateway.dependencies import get_synthesizer
from gateway.admission import Overloaded
from gateway.auth import accept
from gateway.streaming import SEND_TIMEOUT
from gateway.synthesis import Synthesizer
from media.containers import PcmEncoder, wav_bytes
from media.pcm import to_s16le
from signaling.closecodes import CloseCode
from signaling.lifecycle import race

router = APIRouter(tags=["unified v1"])
log = logging.getLogger(__name__)

# A /ws/v1/tts client says what to synthesize at once; one that says nothing holds a socket for nothing.
CONFIG_TIMEOUT = 10.0


class TtsRequest(BaseModel):
    text: str = Field(description="The text to speak (vc ignores it, but send it, empty).")
    mode: Mode = Mode.SFT
    speaker: str | None = Field(None, description="Built-in or saved voice; empty: the engine's default voice.")
    prompt_text: str = ""
    prompt_wav_path: str = Field("", description="A file inside the server's prompt directory.")
    prompt_audio_base64: str = Field("", description="Prompt audio (any common format) instead of a path.")
    instruct_text: str = ""
    source_wav_path: str = Field("", description="vc: a file inside the server's prompt directory.")
    source_audio_base64: str = Field("", description="vc: source audio instead of a path.")
    stream: StrictBool = False
    speed: StrictFloat = Field(1.0, ge=0.5, le=2.0)
    seed: StrictInt = Field(0, ge=0, description="0: random; >0: reproducible output on the same engine.")


@router.get("/v1/speakers")
async def speakers(synth: Synthesizer = Depends(get_synthesizer)) -> dict:
    return {"speakers": synth.speakers()}


@router.post("/v1/tts", response_model=None, responses={200: {"content": {"audio/pcm": {}}}})
async def tts(body: TtsRequest, request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response | dict:
    """Non-stream: ``{"audio": base64 WAV, "sample_rate"}``; stream: s16le PCM chunks."""
    stream = await _open(synth, body, streaming=body.stream)
    if body.stream:
        return _pcm_response(stream)
    samples = await collect_audio(stream, request)
    if samples is None:
        return Response(status_code=499)
    return {"audio": base64.b64encode(wav_bytes(samples, stream.sample_rate)).decode(), "sample_rate": stream.sample_rate}


@router.post("/v1/tts/stream", response_class=Response)
async def tts_stream(body: TtsRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    return _pcm_response(await _open(synth, body, streaming=True))


@router.websocket("/ws/v1/tts")
async def ws_tts(websocket: WebSocket, synth: Synthesizer = Depends(get_synthesizer)) -> None:
    """One JSON config in (the ``/v1/tts`` fields); binary s16le frames out; then ``{"done": true}``."""
    await accept(websocket)
    try:
        async with asyncio.timeout(CONFIG_TIMEOUT):
            body = await _receive_config(websocket)
        stream = await _open(synth, body, streaming=True)
    except WebSocketDisconnect:
        return
    except TimeoutError:
        await websocket.send_json({"error": f"no config within {CONFIG_TIMEOUT:g} s", "done": True})
        await websocket.close(code=CloseCode.POLICY_VIOLATION)
        return
    except (ValidationError, ValueError, SynthesisError, Overloaded) as error:
        await websocket.send_json({"error": _message(error), "done": True})
        await websocket.close(code=CloseCode.POLICY_VIOLATION)
        return
    if await _send_until_disconnect(websocket, stream):
        with contextlib.suppress(WebSocketDisconnect):  # a client may close as the last audio reaches it
            await websocket.send_json({"done": True})
            await websocket.close()


async def _receive_config(websocket: WebSocket) -> TtsRequest:
    """The first message: the ``/v1/tts`` fields as JSON text (a binary frame is refused, not misread)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ValueError("the first message must be JSON text with the /v1/tts fields")
    try:
        fields = json.loads(message["text"])
    except RecursionError as error:
        raise ValueError("the config is nested too deeply") from error
    return TtsRequest.model_validate(fields)


async def _send_until_disconnect(websocket: WebSocket, stream: AudioStream) -> bool:
    """Send every chunk; a client that leaves stops the engine work. True if all was sent."""

    async def send_all() -> None:
        async for samples in stream:
            async with asyncio.timeout(SEND_TIMEOUT):  # a client that stopped reading gives up its slot
                await websocket.send_bytes(to_s16le(samples))

    async def wait_for_close() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        stream.cancel()  # the engine work stops first, before the race's teardown

    try:
        finish = await race(send_all(), wait_for_close())
    finally:
        stream.cancel()
    if finish.index == 1:  # the client left first
        return False
    if isinstance(finish.error, SynthesisError):  # e.g. the audio ran far too long: say so
        log.warning("/ws/v1/tts stream failed: %s", finish.error)
        with contextlib.suppress(Exception):
            await websocket.send_json({"error": str(finish.error), "done": True})
            await websocket.close(code=CloseCode.INTERNAL_ERROR)
        return False
    return finish.error is None


async def _open(synth: Synthesizer, body: TtsRequest, *, streaming: bool) -> AudioStream:
    params = SpeechParams(
        voice=body.speaker,
        mode=body.mode,
        speed=body.speed,
        seed=body.seed,
        instruct_text=body.instruct_text,
        prompt_text=body.prompt_text,
        prompt_audio=_audio(synth, body.prompt_audio_base64, body.prompt_wav_path, "prompt"),
        source_audio=_audio(synth, body.source_audio_base64, body.source_wav_path, "source", prompt=False),
    )
    return await synth.open(body.text, params, stream=streaming)


def _audio(synth: Synthesizer, encoded: str, path: str, what: str, *, prompt: bool = True) -> Audio | None:
    if encoded:
        return synth.audio_from_base64(encoded, f"{what}_audio_base64", prompt=prompt)
    if path:
        return synth.audio_from_path(path, f"{what}_wav_path", prompt=prompt)
    return None


def _pcm_response(stream: AudioStream) -> Response:
    return AudioStreamingResponse(stream, PcmEncoder(stream.sample_rate), {"X-Sample-Rate": str(stream.sample_rate)})


def _message(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
    return str(error)
