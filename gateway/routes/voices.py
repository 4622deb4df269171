"""The voice registry over HTTP: create, list, get, rename, delete, import and export.

With API keys, a saved voice belongs to the tenant whose key saved it: for
every other tenant it does not exist (404 here, an unknown voice on the
synthesis routes). Admin keys see every voice and may hand one to a tenant
(``PATCH {"owner": name}``); voices saved before tenants (no owner) are the
admins' until then. Built-in voices are everyone's.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from starlette.datastructures import UploadFile as FormFile
from fastapi.responses import Response
from pydantic import BaseModel, model_validator

from cosyvoice.voices import VoiceScope, check_id
from gateway.auth import caller_of
from gateway.dependencies import get_registry, get_services, get_settings, get_synthesizer
from gateway.services import Services
from gateway.settings import Settings
from gateway.refusals import UndecodableAudio
from gateway.synthesis import Synthesizer
from media.containers import wav_bytes

router = APIRouter(prefix="/v1/voices", tags=["voices"])

SPK2INFO_KEY = "spk2info"  # features imported from (or exportable to) a CosyVoice spk2info.pt
# Voices one spk2info import may create: CosyVoice ships a handful of speakers; each voice is a
# directory on disk, so a file of thousands of tiny entries would be a flood, not a voice set.
MAX_IMPORT_ENTRIES = 256
MAX_FEATURES = 32  # tensors per speaker (CosyVoice2's zero-shot entries hold about ten)
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # stored as file names inside an .npz


class VoiceJson(BaseModel):
    id: str
    prompt_text: str = ""
    audio_base64: str


class VoiceChange(BaseModel):
    id: str | None = None  # a new id
    owner: str | None = None  # admin keys: the tenant (key name) the voice now belongs to; null: none (admins only)

    @model_validator(mode="after")
    def _changes_something(self) -> VoiceChange:
        # A validation error, so the 422 has the documented shape (a list of problems), not a bare string.
        if self.id is None and "owner" not in self.model_fields_set:
            raise ValueError("send a new 'id', or (admin keys) an 'owner'")
        return self


@router.get("")
async def list_voices(
    synth: Synthesizer = Depends(get_synthesizer), registry: VoiceScope = Depends(get_registry)
) -> dict:
    return {
        "builtin": list(synth.capabilities.voices),
        "voices": [info.as_dict() for info in registry.list()],
    }


@router.post("", status_code=201)
async def create_voice(
    request: Request, synth: Synthesizer = Depends(get_synthesizer), registry: VoiceScope = Depends(get_registry)
) -> dict:
    """Multipart (``id``, ``prompt_text``, ``audio`` file) or JSON (``id``, ``prompt_text``, ``audio_base64``).

    Undecodable audio is 415; audio that decodes but is unfit as a prompt is 400.
    """
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            voice_id, prompt_text, upload = form.get("id"), form.get("prompt_text", ""), form.get("audio")
            if not (isinstance(voice_id, str) and isinstance(prompt_text, str) and isinstance(upload, FormFile)):
                raise HTTPException(422, "multipart fields: id (text), prompt_text (text), audio (file)")
            audio = await synth.audio_from_upload(upload, "audio")
        elif content_type.startswith("application/json"):
            try:
                body = VoiceJson.model_validate_json(await request.body())
            except ValueError as error:
                raise HTTPException(422, f"invalid voice JSON: {error}") from error
            voice_id, prompt_text = body.id, body.prompt_text
            audio = synth.audio_from_base64(body.audio_base64, "audio_base64")
        else:
            raise HTTPException(415, "send multipart/form-data or application/json")
    except UndecodableAudio as error:
        raise HTTPException(415, str(error)) from error
    return registry.create(voice_id, audio, prompt_text).as_dict()


@router.get("/export", response_class=Response)
async def export_spk2info(registry: VoiceScope = Depends(get_registry)) -> Response:
    """Saved voices that carry CosyVoice speaker features, as a ``spk2info.pt`` file."""
    torch = _torch()
    entries = {}
    for voice_id in registry.ids():
        features = registry.get(voice_id).features.get(SPK2INFO_KEY)
        if features:
            entries[voice_id] = {name: torch.from_numpy(np.asarray(value)) for name, value in features.items()}
    buffer = io.BytesIO()
    torch.save(entries, buffer)
    return Response(
        buffer.getvalue(),
        media_type="application/octet-stream",
        headers={"Content-Disposition": "attachment; filename=spk2info.pt"},
    )


@router.post("/import")
async def import_spk2info(
    file: UploadFile = File(...),
    replace: bool = Form(False),
    registry: VoiceScope = Depends(get_registry),
    settings: Settings = Depends(get_settings),
) -> dict:
    """Add the entries of a CosyVoice ``spk2info.pt`` (a dict of speaker id -> dict of tensors), all or none.

    Every entry is checked before any is saved (ids, tensor names, tensors);
    new voices are saved before existing ones are replaced, so a conflict
    stops the import before anything is overwritten, and what it saved is
    removed again.
    """
    torch = _torch()
    data = await file.read(settings.limits.max_upload_bytes + 1)
    if len(data) > settings.limits.max_upload_bytes:
        raise HTTPException(413, "spk2info file too large")
    try:
        entries = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise HTTPException(415, f"not a readable spk2info.pt: {error}") from error
    if not isinstance(entries, dict) or not all(isinstance(value, dict) for value in entries.values()):
        raise HTTPException(415, "spk2info.pt must hold a dict of speaker id -> dict of tensors")
    if len(entries) > MAX_IMPORT_ENTRIES:
        raise HTTPException(400, f"spk2info.pt holds {len(entries)} speakers; one import takes at most {MAX_IMPORT_ENTRIES}")
    try:  # every entry converts before any is saved: a bad tensor imports nothing
        voices = {_speaker_id(voice_id): _arrays(torch, voice_id, entry) for voice_id, entry in entries.items()}
    except (TypeError, RuntimeError) as error:
        raise HTTPException(415, f"spk2info.pt holds a tensor that cannot be stored: {error}") from error
    existing = [voice_id for voice_id in voices if voice_id in registry]
    if existing and not replace:
        raise HTTPException(409, f"voices already exist: {', '.join(existing)} (send replace=true to overwrite them)")
    saved: list[str] = []
    try:
        for voice_id in sorted(voices, key=lambda voice_id: voice_id in existing):  # new ones first
            registry.create(voice_id, None, features={SPK2INFO_KEY: voices[voice_id]}, source="spk2info", replace=replace)
            if voice_id not in existing:
                saved.append(voice_id)
    except BaseException:
        for voice_id in saved:
            with contextlib.suppress(Exception):
                registry.delete(voice_id)
        raise
    return {"imported": list(voices)}


@router.get("/{voice_id}")
async def get_voice(voice_id: str, registry: VoiceScope = Depends(get_registry)) -> dict:
    return registry.info(voice_id).as_dict()


@router.get("/{voice_id}/audio", response_class=Response)
async def get_voice_audio(voice_id: str, registry: VoiceScope = Depends(get_registry)) -> Response:
    audio = registry.get(voice_id).prompt_audio
    if audio is None:
        raise HTTPException(404, f"voice '{voice_id}' has no prompt audio (imported features only)")
    return Response(wav_bytes(audio.samples, audio.sample_rate), media_type="audio/wav")


@router.patch("/{voice_id}")
async def change_voice(
    voice_id: str,
    body: VoiceChange,
    request: Request,
    registry: VoiceScope = Depends(get_registry),
    services: Services = Depends(get_services),
) -> dict:
    """Rename (``id``) and, with an admin key, hand to another tenant (``owner``)."""
    info = registry.info(voice_id)
    if "owner" in body.model_fields_set:
        if not caller_of(request).admin:
            raise HTTPException(403, "only admin keys change a voice's owner")
        if body.owner is not None and body.owner not in services.keys.names():
            raise HTTPException(400, f"owner '{body.owner}' is the name of no API key")
        info = registry.set_owner(voice_id, body.owner)
    if body.id is not None:
        info = registry.rename(voice_id, body.id)
    return info.as_dict()


@router.delete("/{voice_id}", status_code=204, response_class=Response)
async def delete_voice(voice_id: str, registry: VoiceScope = Depends(get_registry)) -> Response:
    registry.delete(voice_id)
    return Response(status_code=204)


def _speaker_id(voice_id: object) -> str:
    if not isinstance(voice_id, str):
        raise HTTPException(400, f"spk2info.pt: speaker ids must be strings, not {type(voice_id).__name__} {voice_id!r}"[:200])
    check_id(voice_id)
    return voice_id


def _arrays(torch, voice_id: str, entry: dict) -> dict[str, np.ndarray]:
    """An entry's tensors as arrays under string names (``np.savez`` takes names as keywords)."""
    if not entry:
        raise HTTPException(400, f"spk2info.pt: speaker {voice_id!r} has no tensors")
    if len(entry) > MAX_FEATURES:
        raise HTTPException(400, f"spk2info.pt: speaker {voice_id!r} has {len(entry)} entries (at most {MAX_FEATURES})")
    arrays = {}
    for name, value in entry.items():
        if not isinstance(name, (str, int)) or isinstance(name, bool) or not _FEATURE_NAME.fullmatch(str(name)):
            raise HTTPException(400, f"spk2info.pt: speaker {voice_id!r} has an odd feature name {name!r}"[:200])
        if not torch.is_tensor(value):
            raise HTTPException(400, f"spk2info.pt: {voice_id!r}/{name} is a {type(value).__name__}, not a tensor")
        arrays[str(name)] = value.detach().cpu().numpy()
    return arrays


def _torch():
    try:
        import torch
    except ImportError as error:
        raise HTTPException(501, "spk2info import/export needs torch (install the 'cosyvoice' extra)") from error
    return torch
