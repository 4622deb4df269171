"""Real-time sessions from the gateway's side: the engine as their speech source, and their creation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cosyvoice import AudioStream, InvalidRequest, Mode
from cosyvoice.text_stream import TextStream, TextStreamingEngine
from gateway.admission import Admission, CapacityGroup, RateLimited
from gateway.auth import OPERATOR, ApiKey, Caller
from gateway.engines import clause_options
from gateway.metrics import Metrics, RejectReason
from gateway.settings import Settings
from gateway.synthesis import Synthesizer
from signaling.manager import SessionManager
from signaling.session import Session, SessionLimits, Transport, VoiceSettings


class SessionSpeech:
    """The engine and registry as a real-time session's speech source."""

    def __init__(self, synth: Synthesizer, transport: str) -> None:
        self.synth = synth
        self.transport = transport

    def check(self, voice: VoiceSettings) -> None:
        self.synth.validate(self.synth.request("check", voice))

    def open(self, text: str, voice: VoiceSettings) -> AudioStream:
        # Sessions report first audio per utterance themselves (from the text that caused it).
        return self.synth.start(self.synth.request(text, voice), self.transport, first_audio=False)

    def streams_text(self, voice: VoiceSettings) -> bool:
        streams = isinstance(self.synth.engine, TextStreamingEngine) and self.synth.capabilities.text_streaming
        return streams and voice.mode is not Mode.VC

    def open_text(self, text: str, voice: VoiceSettings, more: TextStream) -> AudioStream:
        # No audio budget: the text, and so the audio it may take, is not known yet.
        request = self.synth.request(text, voice)
        stream = self.synth.engine.synthesize_text_stream(request, more)
        self.synth.metrics.observe_stream(stream, self.transport, request.mode.value, first_audio=False)
        return stream

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
        except (TypeError, ValueError, OverflowError) as error:
            raise InvalidRequest(f"bad voice settings: {error}") from error
        return replace(current, **changes)


class SessionFactory:
    """Opens sessions for any transport, with the voice a client asked for, and registers them."""

    def __init__(
        self, synth: Synthesizer, settings: Settings, manager: SessionManager, admission: Admission, metrics: Metrics
    ) -> None:
        self.synth = synth
        self.manager = manager
        self.admission = admission
        self.metrics = metrics
        self.clause_options = clause_options(settings)
        self.text_streaming = settings.cosyvoice.text_streaming
        self.limits = SessionLimits(
            max_text_chars=settings.limits.max_session_text_chars,
            max_utterance_chars=settings.limits.max_utterance_chars,
            max_queued=settings.limits.max_queued_clauses,
            max_lead_seconds=settings.session.max_lead_seconds,
        )
        self._sockets: list[str | None] = []  # the keys of the voice-agent sockets open now (None: no key)

    def parse_voice(self, fields: dict[str, Any], current: VoiceSettings) -> VoiceSettings:
        return SessionSpeech(self.synth, "").parse_voice(fields, current)

    def hold_socket(self, owner: ApiKey | None) -> Callable[[], None]:
        """Count a voice-agent socket (ElevenLabs, Cartesia) as a WebSocket session while it is open: against
        ``limits.max_websocket_sessions`` and its key's ``max_sessions``. Returns its release (idempotent).

        Raises ``Overloaded`` or ``RateLimited`` as :meth:`open` does.
        """
        self._admit(Transport.WEBSOCKET, owner)
        key = owner.name if owner is not None else None
        self._sockets.append(key)
        held = [key]
        return lambda: held and self._sockets.remove(held.pop())

    def _admit(self, transport: Transport, owner: ApiKey | None) -> None:
        """Refuse a session (or socket) beyond its capacity group's limit, its key's, or while the server drains."""
        group = CapacityGroup.of(transport)
        live = sum(self.manager.count(t) for t in group.transports)
        self.admission.check_session(group, live + (len(self._sockets) if group is CapacityGroup.WEBSOCKET else 0))
        if owner is not None and owner.max_sessions:
            owned = sum(1 for s in self.manager.list() if s.owner == owner.name) + self._sockets.count(owner.name)
            if owned >= owner.max_sessions:
                self.metrics.rejects.labels(RejectReason.KEY_SESSIONS).inc()
                raise RateLimited(f"key '{owner.name}' already has {owned} live sessions", retry_after=5)

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
        self._admit(transport, owner)
        if session_id is not None and self.manager.get(session_id) is not None:
            raise ValueError(f"a session with id {session_id} is already live")
        caller = caller or (owner.caller if owner is not None else OPERATOR)
        speech = SessionSpeech(self.synth.for_caller(caller), transport)
        # The default voice by name, so that session.created says what the session will sound like.
        voice = speech.parse_voice(voice_fields, VoiceSettings(voice=self.synth.capabilities.default_voice))
        speech.check(voice)
        session = Session(
            speech,
            transport=transport,
            output_rate=output_rate,
            voice=voice,
            clause_options=self.clause_options,
            session_id=session_id,
            limits=self.limits,
            text_streaming=self.text_streaming,
        )
        session.owner = caller.tenant
        metrics = self.metrics
        session.events.tap = lambda event: metrics.session_event(event, session.transport, session.voice.mode.value)
        return self.manager.add(session)
