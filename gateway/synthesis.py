"""From route fields to engine requests: voices, prompt audio, server-side paths.

Every API surface (seed A/B/C, OpenAI, WebSocket, sessions) builds its
requests here, so a voice id, an uploaded prompt or a prompt path means the
same thing on every route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import re
from dataclasses import replace
from pathlib import Path

from fastapi import UploadFile

from cosyvoice import Audio, AudioStream, Capabilities, Engine, InvalidRequest, SpeechParams, SynthesisRequest
from cosyvoice.voices import VoiceRegistry, VoiceScope, validate_prompt
from gateway.admission import Admission
from gateway.budget import audio_budget
from gateway.auth import Caller
from gateway.metrics import Metrics
from gateway.refusals import PathRefused, UndecodableAudio, UploadTooLarge
from gateway.settings import Settings
from media.decode import AudioDecodeError, decode_audio

MAX_SOURCE_SECONDS = 120.0
# Control characters and unpaired surrogates: nothing an engine can speak, and
# a NUL or a lone surrogate crashes the embedded voice's worker mid-stream.
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class Synthesizer:
    """The engine, the voice registry, admission and metrics, behind one request builder.

    ``registry`` is the saved voices one caller may use; the app's own
    synthesizer sees all of them, and each request gets :meth:`for_caller`'s.
    """

    def __init__(
        self, engine: Engine, registry: VoiceRegistry, settings: Settings, admission: Admission, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.registry = VoiceScope(registry, None, everything=True)
        self.settings = settings
        self.admission = admission
        self.metrics = metrics

    def for_caller(self, caller: Caller) -> Synthesizer:
        """This synthesizer with only the saved voices ``caller`` may use: its tenant's, or all for an admin."""
        scoped = copy.copy(self)
        scoped.registry = VoiceScope(self.registry.registry, caller.tenant, everything=caller.admin)
        return scoped

    @property
    def capabilities(self) -> Capabilities:
        return self.engine.capabilities

    @property
    def sample_rate(self) -> int:
        return self.engine.capabilities.sample_rate

    def speakers(self) -> list[str]:
        """Built-in voices first, then saved ones."""
        built_in = list(self.engine.capabilities.voices)
        return built_in + [voice for voice in self.registry.ids() if voice not in built_in]

    def request(self, text: str, params: SpeechParams, *, stream: bool = True) -> SynthesisRequest:
        """A request with ``params.voice`` resolved: a saved voice comes with its prompt."""
        voice = params.voice or None
        saved = None
        if voice is not None and voice not in self.engine.capabilities.voices and voice in self.registry:
            saved = self.registry.get(voice)
        prompt_text, instruct_text = speakable(params.prompt_text), speakable(params.instruct_text)
        params = replace(params, voice=voice, prompt_text=prompt_text, instruct_text=instruct_text)
        return SynthesisRequest.of(speakable(text), params, saved_voice=saved, stream=stream)

    def validate(self, request: SynthesisRequest) -> None:
        """Raise ``InvalidRequest`` (or ``EngineUnavailable``) if the engine cannot serve ``request``."""
        self.engine.validate(request)

    async def open(self, text: str, params: SpeechParams, *, stream: bool = True) -> AudioStream:
        """An admitted, measured HTTP synthesis; raises before any audio on bad input or overload.

        The request is validated before it queues for a slot, so bad input
        never waits; the slot is held until the stream ends, however it ends,
        and a stream that outlives ``request_timeout`` is cut off.
        """
        request = self.request(text, params, stream=stream)
        self.validate(request)
        slot = await self.admission.synthesis_slot()
        try:
            stream = self.start(request, "http")
        except BaseException:
            slot.release()
            raise
        timer = asyncio.get_running_loop().call_later(self.settings.limits.request_timeout, stream.cancel)
        stream.add_done_callback(lambda _: (slot.release(), timer.cancel()))
        return stream

    def start(self, request: SynthesisRequest, transport: str, *, first_audio: bool = True) -> AudioStream:
        """The engine stream for ``request``, its audio bounded by its text, its figures recorded when it ends."""
        stream = self.engine.synthesize(request)
        stream.limit(round(audio_budget(request) * stream.sample_rate))
        self.metrics.observe_stream(stream, transport, request.mode.value, first_audio=first_audio)
        return stream

    # Prompt and source audio, from the three ways a client can send it.

    def audio_from_bytes(self, data: bytes, field: str, *, prompt: bool = True) -> Audio:
        limit = self.settings.limits.max_upload_bytes
        if len(data) > limit:
            raise UploadTooLarge(f"{field} is {len(data)} bytes; the limit is {limit}")
        if not data:
            raise InvalidRequest(f"{field} is empty")
        try:
            samples, rate = decode_audio(data, max_seconds=MAX_SOURCE_SECONDS)
        except AudioDecodeError as error:
            raise UndecodableAudio(f"{field}: {error}") from error
        audio = Audio(samples, rate)
        if prompt:
            try:
                validate_prompt(audio)
            except InvalidRequest as error:
                raise InvalidRequest(f"{field}: {error}") from error
        return audio

    def audio_from_base64(self, data: str, field: str, *, prompt: bool = True) -> Audio:
        if len(data) > self.settings.limits.max_upload_bytes * 4 // 3 + 4:
            raise UploadTooLarge(f"{field} is larger than {self.settings.limits.max_upload_bytes} bytes")
        try:
            raw = base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise UndecodableAudio(f"{field} is not valid base64") from error
        return self.audio_from_bytes(raw, field, prompt=prompt)

    async def audio_from_upload(self, upload: UploadFile, field: str, *, prompt: bool = True) -> Audio:
        limit = self.settings.limits.max_upload_bytes
        data = await upload.read(limit + 1)
        return self.audio_from_bytes(data, field, prompt=prompt)

    def audio_from_path(self, name: str, field: str, *, prompt: bool = True) -> Audio:
        """A file named by the client, accepted only inside ``paths.prompt_dir``."""
        path = self.server_path(name, field)
        return self.audio_from_bytes(path.read_bytes(), field, prompt=prompt)

    def server_path(self, name: str, field: str) -> Path:
        base = self.settings.paths.prompt_dir
        if not base:
            raise PathRefused(f"{field}: server-side paths are disabled; send the audio instead")
        root = Path(base).expanduser().resolve()
        try:  # a NUL, an unpaired surrogate or an overlong name is the client's mistake
            candidate = (root / name).resolve()  # follows symlinks, so a link out of root is caught
            is_file = candidate.is_file()
        except (OSError, ValueError) as error:
            raise InvalidRequest(f"{field}: not a usable file name") from error
        if not candidate.is_relative_to(root):
            raise PathRefused(f"{field}: the path is outside the prompt directory")
        if not is_file:
            raise InvalidRequest(f"{field}: no such file in the prompt directory: {name}")
        return candidate


def speakable(text: str) -> str:
    """``text`` with control characters and unpaired surrogates as spaces.

    Text of nothing else is then refused as empty before any audio, and the
    rest is spoken, instead of failing the engine after the headers are sent.
    """
    return _UNSPEAKABLE.sub(" ", text)
