"""Seed server A (the ``api.py`` style): JSON bodies, MP3 or L16 streams, cloning by upload."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt

from cosyvoice import Mode, SpeechParams
from cosyvoice.voices import VoiceScope
from gateway.audio import AudioStreamingResponse
from gateway.dependencies import get_registry, get_settings, get_synthesizer
from gateway.settings import Settings
from gateway.synthesis import Synthesizer
from media.containers import PcmEncoder, open_encoder

router = APIRouter(tags=["seed A (api.py)"])


class Common(BaseModel):
    tts_text: str
    stream: StrictBool = False
    speed: StrictFloat = Field(1.0, ge=0.5, le=2.0)
    seed: StrictInt = Field(0, ge=0)

    def params(self, **how) -> SpeechParams:
        """This request's speed and seed with the route's voice and mode."""
        return SpeechParams(speed=self.speed, seed=self.seed, **how)


class SftRequest(Common):
    spk_id: str


class ZeroShotRequest(Common):
    prompt_text: str
    prompt_audio_base64: str


class CrossLingualRequest(Common):
    prompt_audio_base64: str


class InstructRequest(Common):
    spk_id: str
    instruct_text: str | None = None


@router.get("/available_spks")
async def available_speakers(synth: Synthesizer = Depends(get_synthesizer)) -> dict:
    return {"speakers": synth.speakers()}


@router.post("/tts", response_class=Response)
async def tts(body: SftRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    return await _mp3(synth, body, body.params(voice=body.spk_id))


@router.post("/tts/pcm", response_class=Response)
async def tts_pcm(body: SftRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    stream = await synth.open(body.tts_text, body.params(voice=body.spk_id), stream=body.stream)
    headers = {
        "X-Sample-Rate": str(stream.sample_rate),
        "X-Channels": "1",
        "X-Bit-Depth": "16",
        "Content-Disposition": "attachment; filename=tts.pcm",
    }
    return AudioStreamingResponse(stream, PcmEncoder(stream.sample_rate), headers, media_type="audio/L16")


@router.post("/tts/zero_shot", response_class=Response)
async def tts_zero_shot(body: ZeroShotRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    prompt = synth.audio_from_base64(body.prompt_audio_base64, "prompt_audio_base64")
    return await _mp3(synth, body, body.params(mode=Mode.ZERO_SHOT, prompt_audio=prompt, prompt_text=body.prompt_text))


@router.post("/tts/cross_lingual", response_class=Response)
async def tts_cross_lingual(body: CrossLingualRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    prompt = synth.audio_from_base64(body.prompt_audio_base64, "prompt_audio_base64")
    return await _mp3(synth, body, body.params(mode=Mode.CROSS_LINGUAL, prompt_audio=prompt))


@router.post("/tts/instruct", response_class=Response)
async def tts_instruct(body: InstructRequest, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    if not body.instruct_text:
        return await _mp3(synth, body, body.params(voice=body.spk_id))
    return await _mp3(synth, body, body.params(mode=Mode.INSTRUCT, voice=body.spk_id, instruct_text=body.instruct_text))


@router.post("/clone")
async def clone(
    prompt_text: str = Form(...),
    spk_id: str = Form(...),
    prompt_audio: UploadFile = File(...),
    synth: Synthesizer = Depends(get_synthesizer),
    registry: VoiceScope = Depends(get_registry),
) -> dict:
    """Save an uploaded prompt as a voice, usable as ``spk_id`` from now on (also after a restart)."""
    audio = await synth.audio_from_upload(prompt_audio, "prompt_audio")
    registry.create(spk_id, audio, prompt_text, source="clone")
    return {"status": "success", "message": f"voice '{spk_id}' saved", "spk_id": spk_id}


@router.post("/upload_audio")
async def upload_audio(
    file: UploadFile = File(...),
    synth: Synthesizer = Depends(get_synthesizer),
    settings: Settings = Depends(get_settings),
) -> dict:
    """Check that an upload is decodable audio and hand it back as base64 (for the JSON routes)."""
    data = await file.read(settings.limits.max_upload_bytes + 1)
    synth.audio_from_bytes(data, "file", prompt=False)
    return {"filename": file.filename, "audio_base64": base64.b64encode(data).decode()}


async def _mp3(synth: Synthesizer, body: Common, params: SpeechParams) -> Response:
    encoder = open_encoder("mp3", synth.sample_rate)
    stream = await synth.open(body.tts_text, params, stream=body.stream)
    return AudioStreamingResponse(stream, encoder, {"Content-Disposition": "attachment; filename=tts.mp3"})
