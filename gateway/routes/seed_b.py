"""Seed server B (upstream's runtime server style): form or query fields, raw s16le PCM out.

Upstream's client sends a multipart body even with GET, so fields are read
from the query string and from a form body alike, for GET and POST.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from cosyvoice import Mode, SpeechParams
from gateway.audio import AudioStreamingResponse
from gateway.dependencies import get_synthesizer
from gateway.synthesis import Synthesizer
from media.containers import PcmEncoder

router = APIRouter(tags=["seed B (runtime server)"])



def _get_and_post(path: str):
    """Register an endpoint for GET and POST alike, each with its own OpenAPI operation id."""

    def register(endpoint):
        name = path.strip("/")
        router.add_api_route(path, endpoint, methods=["GET"], response_class=Response, operation_id=f"{name}_get")
        router.add_api_route(path, endpoint, methods=["POST"], response_class=Response, operation_id=f"{name}_post")
        return endpoint

    return register


@_get_and_post("/inference_sft")
async def inference_sft(request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    fields = await _fields(request, "tts_text", "spk_id")
    return await _pcm(synth, fields["tts_text"], SpeechParams(voice=fields["spk_id"]))


@_get_and_post("/inference_zero_shot")
async def inference_zero_shot(request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    fields = await _fields(request, "tts_text", "prompt_text", "prompt_wav")
    prompt = await synth.audio_from_upload(fields["prompt_wav"], "prompt_wav")
    params = SpeechParams(mode=Mode.ZERO_SHOT, prompt_audio=prompt, prompt_text=fields["prompt_text"])
    return await _pcm(synth, fields["tts_text"], params)


@_get_and_post("/inference_cross_lingual")
async def inference_cross_lingual(request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    fields = await _fields(request, "tts_text", "prompt_wav")
    prompt = await synth.audio_from_upload(fields["prompt_wav"], "prompt_wav")
    return await _pcm(synth, fields["tts_text"], SpeechParams(mode=Mode.CROSS_LINGUAL, prompt_audio=prompt))


@_get_and_post("/inference_instruct")
async def inference_instruct(request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    fields = await _fields(request, "tts_text", "spk_id", "instruct_text")
    params = SpeechParams(mode=Mode.INSTRUCT, voice=fields["spk_id"], instruct_text=fields["instruct_text"])
    return await _pcm(synth, fields["tts_text"], params)


@_get_and_post("/inference_instruct2")
async def inference_instruct2(request: Request, synth: Synthesizer = Depends(get_synthesizer)) -> Response:
    fields = await _fields(request, "tts_text", "instruct_text", "prompt_wav")
    prompt = await synth.audio_from_upload(fields["prompt_wav"], "prompt_wav")
    params = SpeechParams(mode=Mode.INSTRUCT2, prompt_audio=prompt, instruct_text=fields["instruct_text"])
    return await _pcm(synth, fields["tts_text"], params)


async def _fields(request: Request, *names: str) -> dict:
    """The named fields from the query string and the form body; 422 if one is missing."""
    values: dict = dict(request.query_params)
    if request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        values.update(form)
    missing = [name for name in names if name not in values]
    if missing:
        raise HTTPException(422, f"missing field(s): {', '.join(missing)}")
    for name in names:
        is_file = name == "prompt_wav"
        if is_file != isinstance(values[name], UploadFile):
            raise HTTPException(422, f"field '{name}' must be {'a file' if is_file else 'text'}")
    return values


async def _pcm(synth: Synthesizer, text: str, params: SpeechParams) -> Response:
    stream = await synth.open(text, params)
    return AudioStreamingResponse(
        stream, PcmEncoder(stream.sample_rate), {"X-Sample-Rate": str(stream.sample_rate)},
        media_type="application/octet-stream",
    )  # fmt: skip
