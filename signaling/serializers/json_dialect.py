"""The JSON media-stream dialects' common reading (Twilio, Telnyx, Plivo, Exotel): one JSON object a message.

Each dialect's file spells its own field names: its start, its media, its
outbound mark and clear, and any events of its own.
"""

from __future__ import annotations

import json
from abc import abstractmethod

import numpy as np

from signaling.serializers.base import (
    CarrierSerializer,
    Dtmf,
    Inbound,
    Malformed,
    Mark,
    Media,
    Message,
    Problem,
    Start,
    Stop,
)
from signaling.serializers.json_media import Codec, base64_media, decode_base64, encode_base64
from signaling.serializers.json_text import json_object


def media_head(message: dict) -> str:
    """The JSON of an outbound media message whose last field is an empty ``payload`` in a ``media`` object, cut
    before the payload's closing quote: media messages are the stream's one hot path, so their fixed part is
    encoded once and each is ``head + base64 + '"}}'`` (base64 needs no escaping), what json.dumps would make."""
    return json.dumps(message)[:-3]


class JsonMediaSerializer(CarrierSerializer):
    """The dialects' shared reading: one JSON object a message, named by its ``event``.

    ``media``, ``dtmf``, ``stop``, ``start`` (once) and the echo of a mark
    (``mark_event``) mean the same in each; a dialect spells its start, its
    media, its outbound mark and clear, and any events of its own.
    """

    echoes_marks = True
    mark_event = "mark"  # the event that echoes one of our marks
    nested = ("media", "mark", "dtmf")  # events whose fields sit in an object named as the event
    tracks = ("inbound",)  # the caller's ``media.track`` (absent: the caller's)
    quiet: frozenset[str] = frozenset({"connected"})  # events that mean nothing to a session

    def __init__(self) -> None:
        self.stream_id = ""  # learnt from start; a second start means nothing
        self.codec = Codec.ULAW
        self.rate = 8000
        self._media_head = ""

    def decode(self, message: Message) -> Inbound | None:
        fields = json_object(message, f"{self.name} message")
        event = fields.get("event")
        if event in self.nested and not isinstance(fields.get(event), dict):
            article = "an" if self.name[0] in "AEIOU" else "a"
            raise Malformed(f"{article} {self.name} {event!r} message without a {event!r} object")
        if event == "media":
            return self._media(fields["media"])
        if event == self.mark_event:
            return self._mark(fields)
        if event == "dtmf":
            digit = fields["dtmf"].get("digit")
            return Dtmf(None if digit is None else str(digit))
        if event == "stop":
            return Stop()
        if event == "start":
            return None if self.stream_id else self._start(fields)
        if event in self.quiet:
            return None
        return self._other(event, fields)

    def decode_audio(self, media: Media) -> np.ndarray:
        return decode_base64(media, self.codec)

    def encode_audio(self, samples: np.ndarray) -> str:
        return self._media_head + encode_base64(samples, self.codec) + '"}}'

    @abstractmethod
    def _start(self, fields: dict) -> Start:
        """Learn the stream, codec and rate from a ``start`` message; raises :class:`ProtocolViolation`."""

    def _media(self, media: dict) -> Media | None:
        """Caller audio from a ``media`` object; None for another track's."""
        if media.get("track", "inbound") not in self.tracks:
            return None
        return base64_media(media.get("payload", ""), self.codec, self.rate)

    def _mark(self, fields: dict) -> Mark:
        return Mark(str(fields["mark"].get("name")))

    def _other(self, event: object, fields: dict) -> Inbound | None:
        """An event of the dialect's own; by default an unknown one, reported and ignored."""
        return Problem(f"unknown {self.name} event {event!r} ignored")
