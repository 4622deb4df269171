"""FreeSWITCH ``mod_audio_stream`` (``uuid_audio_stream <uuid> start <url> mono 8k|16k [metadata]``).

Inbound: an optional first text message, the command's metadata (a JSON
object here: its fields become the session's parameters, ``sampleRate``
overrides the route's rate); binary messages of 16-bit linear PCM at the
command's rate. Outbound: text ``{"type": "streamAudio", "data":
{"audioDataType": "raw", "sampleRate": ..., "audioData": <base64 PCM>}}``.
The module has no marks, no clear and sends no DTMF on the socket: barge-in
rests on our pacing (the module holds at most our lead).
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np

from media.pcm import from_s16le, to_s16le
from signaling.serializers.base import CarrierSerializer, Inbound, Malformed, Media, Message, Problem, Start
from signaling.serializers.linear import pcm_media, sample_rate_of, scalar_fields, text_object

RATES = (8000, 16000)


class FreeSwitchSerializer(CarrierSerializer):
    """``sample_rate``: the rate named in ``uuid_audio_stream`` (the route's ``rate`` query parameter)."""

    name = "FreeSWITCH"

    def __init__(self, sample_rate: int = 8000) -> None:
        self.sample_rate = sample_rate_of(sample_rate, RATES, self.name)
        self._started = False
        self._head = ""

    def decode(self, message: Message) -> Inbound | None:
        if not self._started:
            return self._start(message)
        if isinstance(message, bytes):
            return pcm_media(message, self.sample_rate)
        return Problem("unexpected FreeSWITCH text message ignored")

    def decode_audio(self, media: Media) -> np.ndarray:
        return from_s16le(media.payload)

    def encode_audio(self, samples: np.ndarray) -> str:
        return self._head + base64.b64encode(to_s16le(samples)).decode() + '"}}'

    def _start(self, message: Message) -> Start:
        """The call starts with its first message: the metadata, or (without any) its first audio, then skipped."""
        self._started = True
        parameters = {}
        if isinstance(message, str):
            try:
                fields = text_object(message, self.name)
            except Malformed:  # metadata is free text to the module: not ours, but still the call's start
                fields = {}
            if "sampleRate" in fields:
                self.sample_rate = sample_rate_of(fields["sampleRate"], RATES, self.name)
            parameters = scalar_fields(fields)
        data = {"audioDataType": "raw", "sampleRate": self.sample_rate, "audioData": ""}
        self._head = json.dumps({"type": "streamAudio", "data": data})[:-3]  # base64 needs no escaping
        call_id = parameters.get("uuid") or parameters.get("call_id") or uuid.uuid4().hex
        return Start(call_id, call_id, parameters, self.sample_rate)
