"""From route fields to engine requests: voices, prompt audio, server-side paths.

Every API surface (seed A/B/C, OpenAI, WebSocket, sessions) builds its
requests here, so a voice id, an uploaded prompt or a prompt path means the
same thing on every route.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import HTTPException, UploadFile

from cosyvoice import Audio, AudioStream, Engine, InvalidRequest, Mode, SynthesisRequest
from cosyvoice.voices import VoiceRegistry, validate_prompt
from gateway.settings import Settings
from media.decode import AudioDecodeError, decode_audio
from signaling.session import VoiceSettings

MAX_SOURCE_SECONDS = 120.0


class UndecodableAudio(InvalidRequest):
    """The client's bytes are not audio we can decode (400 on synthesis routes, 415 on voice routes)."""


class Synthesizer:
    """The engine, the voice registry and the limits, behind one request builder."""

    def __init__(self, engine: Engine, registry: VoiceRegistry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings

    @property
    def sample_rate(self) -> int:
        return self.engine.capabilities.sample_rate

    def speakers(self) -> list[str]:
        """Built-in voices first, then saved ones."""
        built_in = list(self.engine.capabilities.voices)
        return built_in + [voice for voice in self.registry.ids() if voice not in built_in]

    def request(
        self,
        text: str,
        *,
        mode: Mode = Mode.SFT,
        voice: str | None = None,
        prompt_audio: Audio | None = None,
        prompt_text: str = "",
        instruct_text: str = "",
        source_audio: Audio | None = None,
        speed: float = 1.0,
        seed: int = 0,
        stream: bool = True,
    ) -> SynthesisRequest:
        """A request with ``voice`` resolved: a saved voice comes with its prompt."""
        voice = voice or None
        saved = None
        if voice is not None and voice not in self.engine.capabilities.voices and voice in self.registry:
            saved = self.registry.get(voice)
        return SynthesisRequest(
            text=text,
            mode=mode,
            voice=voice,
            saved_voice=saved,
            prompt_audio=prompt_audio,
            prompt_text=prompt_text,
            instruct_text=instruct_text,
            source_audio=source_audio,
            speed=speed,
            seed=seed,
            stream=stream,
        )

    def open(self, text: str, **fields) -> AudioStream:
        """Validate and start synthesis (raises before any audio on bad input)."""
        return self.engine.synthesize(self.request(text, **fields))

    # Prompt and source audio, from the three ways a client can send it.

    def audio_from_bytes(self, data: bytes, field: str, *, prompt: bool = True) -> Audio:
        limit = self.settings.limits.max_upload_bytes
        if len(data) > limit:
            raise HTTPException(413, f"{field} is {len(data)} bytes; the limit is {limit}")
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
            raise HTTPException(413, f"{field} is larger than {self.settings.limits.max_upload_bytes} bytes")
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
            raise HTTPException(403, f"{field}: server-side paths are disabled; send the audio instead")
        root = Path(base).expanduser().resolve()
        candidate = (root / name).resolve()  # follows symlinks, so a link out of root is caught
        if not candidate.is_relative_to(root):
            raise HTTPException(403, f"{field}: the path is outside the prompt directory")
        if not candidate.is_file():
            raise InvalidRequest(f"{field}: no such file in the prompt directory: {name}")
        return candidate


class SessionSpeech:
    """The engine and registry as a real-time session's speech source."""

    def __init__(self, synth: Synthesizer) -> None:
        self.synth = synth

    def check(self, voice: VoiceSettings) -> None:
        self.synth.engine.validate(self._request("check", voice))

    def open(self, text: str, voice: VoiceSettings) -> AudioStream:
        return self.synth.engine.synthesize(self._request(text, voice))

    def parse_voice(self, fields: dict[str, Any], current: VoiceSettings) -> VoiceSettings:
        """Voice settings from a client message or query string, over the current ones."""
        changes: dict[str, Any] = {}
        try:
            for name, kind in (("voice", str), ("instruct_text", str), ("prompt_text", str)):
                if fields.get(name) is not None:
                    changes[name] = kind(fields[name])
            if fields.get("mode") is not None:
                changes["mode"] = Mode(fields["mode"])
            if fields.get("speed") is not None:
                changes["speed"] = float(fields["speed"])
            if fields.get("seed") is not None:
                changes["seed"] = int(fields["seed"])
            if fields.get("prompt_audio_base64"):
                changes["prompt_audio"] = self.synth.audio_from_base64(fields["prompt_audio_base64"], "prompt_audio_base64")
        except HTTPException as error:
            raise InvalidRequest(str(error.detail)) from error
        except (TypeError, ValueError) as error:
            raise InvalidRequest(f"bad voice settings: {error}") from error
        return replace(current, **changes)

    def _request(self, text: str, voice: VoiceSettings) -> SynthesisRequest:
        return self.synth.request(
            text,
            mode=voice.mode,
            voice=voice.voice,
            prompt_audio=voice.prompt_audio,
            prompt_text=voice.prompt_text,
            instruct_text=voice.instruct_text,
            speed=voice.speed,
            seed=voice.seed,
        )
