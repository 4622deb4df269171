"""Seed server C: the unified v1 API (``/v1/speakers``, ``/v1/tts``, ``/v1/tts/stream``)."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from cosyvoice import Engine, Mode, SynthesisRequest
from gateway.audio import AudioStreamingResponse, collect_audio
from gateway.dependencies import get_engine
from media.containers import PcmEncoder, wav_bytes

router = APIRouter(tags=["unified v1"])


class TtsRequest(BaseModel):
    text: str = Field(description="The text to speak.")
    mode: Mode = Mode.SFT
    speaker: str | None = Field(None, description="Voice for sft/instruct; empty: the engine's default voice.")
    prompt_text: str = ""
    prompt_wav_path: str = ""
    instruct_text: str = ""
    source_wav_path: str = ""
    stream: bool = False
    speed: float = Field(1.0, ge=0.5, le=2.0)
    seed: int = Field(0, ge=0, description="0: random; >0: reproducible output on the same engine.")


@router.get("/v1/speakers")
async def speakers(engine: Engine = Depends(get_engine)) -> dict:
    return {"speakers": list(engine.capabilities.voices)}


@router.post("/v1/tts", response_model=None)
async def tts(body: TtsRequest, request: Request, engine: Engine = Depends(get_engine)) -> Response | dict:
    """Non-stream: ``{"audio": base64 WAV, "sample_rate"}``; stream: s16le PCM chunks."""
    return await _synthesize(body, request, engine, stream=body.stream)


@router.post("/v1/tts/stream", response_model=None)
async def tts_stream(body: TtsRequest, request: Request, engine: Engine = Depends(get_engine)) -> Response:
    return await _synthesize(body, request, engine, stream=True)


async def _synthesize(body: TtsRequest, request: Request, engine: Engine, *, stream: bool) -> Response | dict:
    synthesis = SynthesisRequest(
        text=body.text,
        mode=body.mode,
        voice=body.speaker or None,
        prompt_text=body.prompt_text,
        instruct_text=body.instruct_text,
        speed=body.speed,
        seed=body.seed,
        stream=stream,
    )
    audio = engine.synthesize(synthesis)
    if stream:
        return AudioStreamingResponse(audio, PcmEncoder(audio.sample_rate), {"X-Sample-Rate": str(audio.sample_rate)})
    samples = await collect_audio(audio, request)
    if samples is None:
        return Response(status_code=499)
    return {"audio": base64.b64encode(wav_bytes(samples, audio.sample_rate)).decode(), "sample_rate": audio.sample_rate}
