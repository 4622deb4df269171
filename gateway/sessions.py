"""Real-time sessions from the gateway's side: the engine as their speech source, and their creation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import HTTPException

from cosyvoice import AudioStream, InvalidRequest, Mode, SynthesisRequest
from gateway.settings import Settings
from gateway.synthesis import Synthesizer
from signaling.manager import SessionManager
from signaling.session import Session, VoiceSettings


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


class SessionFactory:
    """Opens sessions for any transport, with the voice a client asked for, and registers them."""

    def __init__(self, synth: Synthesizer, settings: Settings, manager: SessionManager) -> None:
        self.speech = SessionSpeech(synth)
        self.settings = settings
        self.manager = manager

    def open(
        self, transport: str, output_rate: int, voice_fields: dict[str, Any], *, session_id: str | None = None
    ) -> Session:
        """A new registered session; ``InvalidRequest`` for a bad voice, ``ValueError`` for a duplicate id."""
        if session_id is not None and self.manager.get(session_id) is not None:
            raise ValueError(f"a session with id {session_id} is already live")
        voice = self.speech.parse_voice(voice_fields, VoiceSettings())
        self.speech.check(voice)
        engine = self.settings.engine
        session = Session(
            self.speech,
            transport=transport,
            output_rate=output_rate,
            voice=voice,
            clause_options={
                "first_clause_chars": engine.first_clause_chars,
                "clause_chars": engine.clause_chars,
                "max_chars": engine.max_clause_chars,
            },
            session_id=session_id,
        )
        return self.manager.add(session)
