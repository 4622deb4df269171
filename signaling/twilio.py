"""Twilio Media Streams (bidirectional ``<Connect><Stream>``) for a session.

Outbound audio is μ-law 8 kHz in 20 ms ``media`` messages; every mark the
session reaches becomes a Twilio ``mark``, reported once Twilio echoes it;
a barge-in sends ``clear``. The dialect is :mod:`signaling.serializers.twilio`,
the call's loop :class:`signaling.carrier.WebSocketCall`.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.websockets import WebSocket

from signaling.carrier import WebSocketCall
from signaling.serializers.twilio import TwilioSerializer
from signaling.session import Session


class TwilioCall(WebSocketCall):
    """One Media Streams WebSocket; the start's custom parameters open the session."""

    def __init__(
        self, websocket: WebSocket, open_session: Callable[[dict[str, str]], Session], *, lead: float, barge_in: bool
    ) -> None:
        super().__init__(websocket, TwilioSerializer(), open_session, lead=lead, barge_in=barge_in)
