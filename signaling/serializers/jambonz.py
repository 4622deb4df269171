"""jambonz ``listen`` with streaming bidirectional audio (subprotocol ``audio.jambonz.org``).

Inbound: one first text message, a JSON object of the call's attributes
(``callSid``, ``from``, ``to``, ...) with ``sampleRate``, ``mixType`` and the
verb's ``metadata``; then binary messages of 16-bit linear PCM at that rate;
with ``passDtmf``, text ``{"event": "dtmf", "dtmf": "5", "duration": ...}``;
and ``{"type": "mark", "data": {"name": ..., "event": "playout" | "cleared"}}``
for marks of ours that were played or dropped. Outbound: binary PCM at
``bidirectionalAudio.sampleRate`` (our markup makes it the inbound rate),
``{"type": "mark", "data": {"name": ...}}`` and ``{"type": "killAudio"}``.
"""

from __future__ import annotations

import json

from signaling.serializers.base import Dtmf, Inbound, Mark, Problem, ProtocolViolation, Start
from signaling.serializers.linear import LinearSerializer, sample_rate_of, scalar_fields

SUBPROTOCOL = "audio.jambonz.org"
RATES = (8000, 16000, 24000, 48000)  # the listen verb's rates that our sessions run at
PHONE_RATE = 8000  # what our listen verb asks for: the listen verb's default, the phone network's rate
KILL_AUDIO = json.dumps({"type": "killAudio"})


class JambonzSerializer(LinearSerializer):
    name = "jambonz"
    early_audio = "audio before the call's metadata"

    def _control(self, fields: dict) -> Inbound | None:
        if self.sample_rate is None:
            return self._start(fields)
        if fields.get("event") == "dtmf":
            digit = fields.get("dtmf")
            return Dtmf(None if digit is None else str(digit))
        if fields.get("type") == "mark":
            data = fields.get("data")
            if not isinstance(data, dict):
                return Problem("a jambonz mark without a data object ignored")
            return Mark(str(data.get("name"))) if data.get("event") == "playout" else None
        return Problem(f"unknown jambonz message {fields.get('type') or fields.get('event')!r} ignored")

    def encode_mark(self, name: str) -> str:
        return json.dumps({"type": "mark", "data": {"name": name}})

    def encode_clear(self) -> str:
        return KILL_AUDIO

    def _start(self, fields: dict) -> Start:
        if fields.get("mixType", "mono") != "mono":
            raise ProtocolViolation(f"jambonz mixType {fields.get('mixType')!r}: a call is one mono stream")
        self.sample_rate = sample_rate_of(fields.get("sampleRate", 8000), RATES, self.name)
        call_id = str(fields.get("callSid") or "")
        if not call_id:
            raise ProtocolViolation("jambonz metadata without a callSid")
        metadata = fields.get("metadata")
        # The verb's metadata (voice, text, ...) may arrive nested or merged into the call's attributes.
        parameters = scalar_fields(fields) | (scalar_fields(metadata) if isinstance(metadata, dict) else {})
        return Start(call_id, call_id, parameters, self.sample_rate)
