"""Telnyx media streaming (TeXML ``<Stream bidirectionalMode="rtp">`` or Call Control ``streaming_start``).

Inbound: ``connected``, ``start`` (top-level ``stream_id``;
``start.call_control_id``, ``start.media_format`` with ``encoding`` and
``sample_rate``, ``start.custom_parameters``), ``media`` (base64 RTP
payloads, no headers, with ``media.track``, ``media.chunk``,
``media.timestamp``), ``dtmf``, ``mark`` (an echo of ours once played),
``error`` and ``stop``. Outbound: ``media``, ``mark`` and ``clear``.

Facts relied on (Telnyx's media streaming docs): audio sent back is dropped
unless the stream was requested with bidirectional mode ``rtp``; media
frames may arrive out of order (reordered here by ``media.chunk`` within
:data:`REORDER_WINDOW` frames); PCMU, PCMA and L16 (network byte order) are
carried at 8 or 16 kHz; G722, OPUS and AMR-WB are refused at the start. Our
audio goes back in the codec and rate the start names, so the stream's
bidirectional codec must be set equal to its codec (our TeXML does).
"""

from __future__ import annotations

import json
from collections import deque

from signaling.serializers.base import Inbound, Media, Problem, ProtocolViolation, Start
from signaling.serializers.json_dialect import JsonMediaSerializer, media_head
from signaling.serializers.json_media import Codec, object_field, rate_of, string_map

CODECS = {"PCMU": Codec.ULAW, "PCMA": Codec.ALAW, "L16": Codec.L16}
RATES = (8000, 16000)
# Frames held back waiting for a missing one: 3 frames (60 ms at Telnyx's 20 ms) cover the reordering
# of a jittery path, and bound what a lost frame delays the speech detector by.
REORDER_WINDOW = 3
CLEAR = json.dumps({"event": "clear"})
MEDIA_HEAD = media_head({"event": "media", "media": {"payload": ""}})


class TelnyxSerializer(JsonMediaSerializer):
    name = "Telnyx"
    tracks = ("inbound", "inbound_track")

    def __init__(self) -> None:
        super().__init__()
        self._media_head = MEDIA_HEAD
        self._order = ChunkOrder(REORDER_WINDOW)

    def released(self) -> list[Inbound]:
        return self._order.ready()

    def encode_mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def encode_clear(self) -> str:
        return CLEAR

    def _start(self, fields: dict) -> Start:
        start = fields.get("start")
        stream_id = fields.get("stream_id") or (start.get("stream_id") if isinstance(start, dict) else None)
        if not isinstance(start, dict) or not stream_id:
            raise ProtocolViolation("start without stream_id")
        media_format = object_field(start, "media_format")
        encoding = str(media_format.get("encoding", "PCMU")).upper()
        if encoding not in CODECS:
            raise ProtocolViolation(f"unsupported Telnyx encoding {encoding!r} (PCMU, PCMA and L16 are carried)")
        self.codec = CODECS[encoding]
        self.rate = rate_of(media_format.get("sample_rate"), RATES, 8000)
        if self.codec is not Codec.L16 and self.rate != 8000:
            raise ProtocolViolation(f"{encoding} at {self.rate} Hz")
        self.stream_id = str(stream_id)
        self._order = ChunkOrder(REORDER_WINDOW)  # audio before the start was never heard: its order does not count
        parameters = string_map(start.get("custom_parameters"), "custom_parameters")
        return Start(str(start.get("call_control_id", "")), self.stream_id, parameters, self.rate)

    def _media(self, media: dict) -> Media | None:
        frame = super()._media(media)
        return None if frame is None else self._order.put(media.get("chunk"), frame)

    def _other(self, event: object, fields: dict) -> Inbound | None:
        if event != "error":
            return super()._other(event, fields)
        payload = fields.get("payload") if isinstance(fields.get("payload"), dict) else {}
        what = payload.get("title") or payload.get("detail")
        return Problem(f"Telnyx reported error {payload.get('code')}: {what}")


class ChunkOrder:
    """Caller audio back in chunk order: a frame ahead of a gap waits for it, at most ``window`` frames.

    A frame older than one already passed on is dropped (it would be heard out of
    place); frames without a chunk number pass straight through.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.next: int | None = None
        self.held: dict[int, Media] = {}
        self._ready: deque[Media] = deque()
        self.dropped = 0

    def put(self, chunk: object, frame: Media) -> Media | None:
        """The next frame due, if any; the rest due now come from :meth:`ready`."""
        try:
            number = int(chunk)
        except (TypeError, ValueError):
            return frame
        if self.next is None:
            self.next = number
        if number < self.next or number in self.held:
            self.dropped += 1
            return None
        self.held[number] = frame
        self._advance()
        if len(self.held) > self.window:  # the gap's frame is lost: skip it
            self.next = min(self.held)
            self._advance()
        return self._ready.popleft() if self._ready else None

    def ready(self) -> list[Media]:
        frames = list(self._ready)
        self._ready.clear()
        return frames

    def _advance(self) -> None:
        while self.next in self.held:
            self._ready.append(self.held.pop(self.next))
            self.next += 1
