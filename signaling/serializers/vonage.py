"""Vonage Voice API WebSockets (an NCCO ``connect`` action to a ``websocket`` endpoint).

Inbound: a first text message ``{"event": "websocket:connected",
"content-type": "audio/l16;rate=16000", ...}`` carrying the endpoint's
``headers`` as further fields; then binary messages of 16-bit linear PCM
(little-endian, mono) at 8 or 16 kHz, 20 ms each; text events
``websocket:dtmf`` (``digit``), ``websocket:notify`` (the ``payload`` of a
``notify`` action of ours, once the audio sent before it has played) and
``websocket:cleared``. Outbound: binary audio in the same format, and text
actions ``{"action": "notify", "payload": ...}`` (our marks) and
``{"action": "clear"}`` (drop the audio Vonage holds).
"""

from __future__ import annotations

import json
import re
import uuid

from signaling.serializers.base import Dtmf, Inbound, Mark, Problem, ProtocolViolation, Start
from signaling.serializers.linear import LinearSerializer, sample_rate_of, scalar_fields

RATES = (8000, 16000)
WIDEBAND = 16000  # what our NCCO asks for: Vonage carries 16 kHz where the call's leg can
CONTENT_TYPE = re.compile(r"\s*audio/l16\s*;\s*rate\s*=\s*(\d+)\s*$", re.IGNORECASE)
MARK_FIELD = "mark"  # our notify payloads are {"mark": name}
CLEAR = json.dumps({"action": "clear"})


def content_type(sample_rate: int) -> str:
    """The NCCO websocket endpoint's ``content-type`` for a rate."""
    return f"audio/l16;rate={sample_rate}"


class VonageSerializer(LinearSerializer):
    name = "Vonage"
    early_audio = "audio before websocket:connected"

    def _control(self, fields: dict) -> Inbound | None:
        event = fields.get("event")
        if event == "websocket:connected":
            return None if self.sample_rate else self._start(fields)  # a second one means nothing
        if event == "websocket:dtmf":
            digit = fields.get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "websocket:notify":
            payload = fields.get("payload")
            return Mark(str(payload.get(MARK_FIELD))) if isinstance(payload, dict) else None
        if event == "websocket:cleared":
            return None
        if event == "websocket:error":
            return Problem(f"Vonage reported an error: {fields.get('message') or fields.get('reason') or fields}")
        return Problem(f"unknown Vonage event {event!r} ignored")

    def encode_mark(self, name: str) -> str:
        return json.dumps({"action": "notify", "payload": {MARK_FIELD: name}})

    def encode_clear(self) -> str:
        return CLEAR

    def _start(self, fields: dict) -> Start:
        match = CONTENT_TYPE.match(str(fields.get("content-type", "")))
        if match is None:
            raise ProtocolViolation(f"unsupported Vonage content-type {fields.get('content-type')!r} (want audio/l16)")
        self.sample_rate = sample_rate_of(match.group(1), RATES, self.name)
        # The endpoint's headers arrive as the message's own fields (some clients nest them under "headers").
        headers = fields.get("headers")
        parameters = scalar_fields(fields, skip=("event", "content-type"))
        if isinstance(headers, dict):
            parameters |= scalar_fields(headers)
        call_id = parameters.get("call_id") or parameters.get("uuid") or uuid.uuid4().hex
        return Start(call_id, call_id, parameters, self.sample_rate)
