"""The OpenAI speech API: ``/v1/audio/speech``, ``/v1/audio/voices``, ``/v1/models``.

The official ``openai`` SDK works against it unchanged. OpenAI's built-in
voice names map to our voices (see :data:`OPENAI_VOICES` and
:func:`voice_for`); any built-in or saved voice id of ours is accepted too,
as a name or as ``{"id": ...}``. Audio comes out at 24 kHz like OpenAI's.
``instructions`` select an instruct mode where the engine has one; elsewhere
they are ignored, as a hint, and the ``X-Instructions-Ignored`` header says why.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictFloat

from cosyvoice import AudioStream, Mode, SpeechParams, UnsupportedMode
from gateway.audio import AudioStreamingResponse
from gateway.dependencies import get_synthesizer
from gateway.errors import OpenAIError
from gateway.synthesis import Synthesizer
from media.containers import StreamEncoder, open_encoder

router = APIRouter(tags=["OpenAI"])

OUTPUT_RATE = 24000
MAX_INPUT_CHARS = 4096
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's voices, and which of a model's usual built-in voices each one prefers
# (CosyVoice-300M-SFT ships 英文女 and 英文男); otherwise the engine's default voice.
OPENAI_VOICES = {
    "alloy": "英文女", "ash": "英文男", "ballad": "英文男", "coral": "英文女", "echo": "英文男",
    "fable": "英文男", "nova": "英文女", "onyx": "英文男", "sage": "英文女", "shimmer": "英文女",
    "verse": "英文男", "marin": "英文女", "cedar": "英文男",
}  # fmt: skip
IGNORED_HEADER = "X-Instructions-Ignored"
FORMATS = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    model: str
    input: str = Field(max_length=MAX_INPUT_CHARS)
    voice: str | VoiceRef
    instructions: str | None = None
    response_format: FORMATS = "mp3"
    speed: StrictFloat = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


@router.post("/v1/audio/speech", response_class=Response)
async def speech(body: SpeechRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    if body.model not in _model_ids(synth):
        raise OpenAIError(404, f"model '{body.model}' does not exist", param="model", code="model_not_found")
    voice = voice_for(synth, body.voice.id if isinstance(body.voice, VoiceRef) else body.voice)
    mode, instructions, headers = Mode.SFT, "", {}
    if body.instructions:
        caps = synth.capabilities
        wanted = Mode.INSTRUCT2 if voice in synth.registry and voice not in caps.voices else Mode.INSTRUCT
        if wanted in caps.modes:
            mode, instructions = wanted, body.instructions
        else:  # a hint to OpenAI's models; LiveKit's and pipecat's examples send it to every server
            headers[IGNORED_HEADER] = f"engine '{caps.engine}' has no {wanted.value} mode"
    encoder = open_encoder(body.response_format, synth.sample_rate, output_rate=OUTPUT_RATE)
    try:
        stream = await synth.open(
            body.input, SpeechParams(voice=voice, mode=mode, speed=body.speed, instruct_text=instructions)
        )
    except UnsupportedMode as error:
        raise OpenAIError(400, str(error), param="instructions" if instructions else "voice") from error
    if body.stream_format == "sse":
        return _sse_response(stream, encoder, body.input, headers)
    return AudioStreamingResponse(stream, encoder, headers)


@router.get("/v1/audio/voices")
async def voices(synth: Synthesizer = Depends(get_synthesizer)) -> dict:
    return {
        "voices": synth.speakers(),
        "openai_voices": {name: voice_for(synth, name) for name in OPENAI_VOICES},
    }


@router.get("/v1/models")
async def models(synth: Synthesizer = Depends(get_synthesizer)) -> dict:
    created = int(time.time())
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "cosyvoice-gateway"} for model in _model_ids(synth)],
    }


def voice_for(synth: Synthesizer, name: str) -> str:
    """Our voice for a requested name: our own ids first, then OpenAI's names."""
    caps = synth.capabilities
    built_in = caps.voices
    if name in built_in or name in synth.registry:
        return name
    if name in OPENAI_VOICES:
        preferred = OPENAI_VOICES[name]
        return preferred if preferred in built_in else (caps.default_voice or name)
    raise OpenAIError(400, f"voice '{name}' does not exist; see GET /v1/audio/voices", param="voice")


def _model_ids(synth: Synthesizer) -> list[str]:
    return [*OPENAI_MODELS, "cosyvoice", synth.capabilities.model]


def _sse_response(stream: AudioStream, encoder: StreamEncoder, text: str, headers: dict[str, str]) -> Response:
    tokens = len(text.split())
    done = {"type": "speech.audio.done", "usage": {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}}
    return AudioStreamingResponse(
        stream,
        encoder,
        {"Cache-Control": "no-cache", **headers},
        media_type="text/event-stream",
        wrap=lambda data: _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}),
        trailer=_event(done),
    )


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
