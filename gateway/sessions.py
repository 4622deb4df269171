"""Real-time sessions from the gateway's side: the engine as their speech source, and their creation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import HTTPException

from cosyvoice import AudioStream, InvalidRequest, Mode, SynthesisRequest
from gateway.admission import RateLimited
from gateway.auth import OPERATOR, ApiKey, Caller
from gateway.settings import Settings
from gateway.synthesis import Synthesizer
from signaling.manager import SessionManager
from signaling.session import Session, SessionLimits, Transport, VoiceSettings

TELEPHONY = (Transport.TWILIO, Transport.AUDIOSOCKET)  # one capacity for all phone calls


class SessionSpeech:
    """The engine and registry as a real-time session's speech source."""

    def __init__(self, synth: Synthesizer, transport: str) -> None:
        self.synth = synth
        self.transport = transport

    def check(self, voice: VoiceSettings) -> None:
        self.synth.engine.validate(self._request("check", voice))

    def open(self, text: str, voice: VoiceSettings) -> AudioStream:
        # Sessions report first audio per utterance themselves (from the text that caused it).
        return self.synth.start(self._request(text, voice), self.transport, first_audio=False)

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
                encoded = fields["prompt_audio_base64"]
                if not isinstance(encoded, str):
                    raise TypeError("prompt_audio_base64 must be a base64 string")
                changes["prompt_audio"] = self.synth.audio_from_base64(encoded, "prompt_audio_base64")
        except HTTPException as error:
            raise InvalidRequest(str(error.detail)) from error
        except (TypeError, ValueError, OverflowError) as error:
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
        self.synth = synth
        self.settings = settings
        self.manager = manager
        self.limits = SessionLimits(
            max_text_chars=settings.limits.max_session_text_chars,
            max_utterance_chars=settings.limits.max_utterance_chars,
            max_queued=settings.limits.max_queued_clauses,
            max_lead_seconds=settings.session.max_lead_seconds,
        )

    def parse_voice(self, fields: dict[str, Any], current: VoiceSettings) -> VoiceSettings:
        return SessionSpeech(self.synth, "").parse_voice(fields, current)

    def open(
        self,
        transport: Transport,
        output_rate: int,
        voice_fields: dict[str, Any],
        *,
        session_id: str | None = None,
        owner: ApiKey | None = None,
        caller: Caller | None = None,
    ) -> Session:
        """A new registered session, owned by ``caller`` (by default the ``owner`` key's tenant,
        or the operator with no key) and speaking only in voices that caller may use.

        Raises ``InvalidRequest`` for a bad voice, ``Overloaded`` when the
        transport is at capacity, ``RateLimited`` when the key has all the
        sessions it may, ``ValueError`` for a duplicate id.
        """
        telephony = transport in TELEPHONY
        live = sum(self.manager.count(t) for t in (TELEPHONY if telephony else (transport,)))
        capacity_group = "telephony" if telephony else transport
        self.synth.admission.check_session(capacity_group, live)
        if owner is not None and owner.max_sessions:
            owned = sum(1 for s in self.manager.list() if s.owner == owner.name)
            if owned >= owner.max_sessions:
                self.synth.metrics.rejects.labels("key_sessions").inc()
                raise RateLimited(f"key '{owner.name}' already has {owned} live sessions", retry_after=5)
        if session_id is not None and self.manager.get(session_id) is not None:
            raise ValueError(f"a session with id {session_id} is already live")
        caller = caller or (owner.caller if owner is not None else OPERATOR)
        speech = SessionSpeech(self.synth.for_caller(caller), transport)
        # The default voice by name, so that session.created says what the session will sound like.
        voice = speech.parse_voice(voice_fields, VoiceSettings(voice=self.synth.engine.capabilities.default_voice))
        speech.check(voice)
        engine = self.settings.engine
        session = Session(
            speech,
            transport=transport,
            output_rate=output_rate,
            voice=voice,
            clause_options={
                "first_clause_chars": engine.first_clause_chars,
                "clause_chars": engine.clause_chars,
                "max_chars": engine.max_clause_chars,
            },
            session_id=session_id,
            limits=self.limits,
        )
        session.owner = caller.tenant
        metrics = self.synth.metrics
        session.events.tap = lambda event: metrics.session_event(event, session.transport, session.voice.mode.value)
        return self.manager.add(session)
