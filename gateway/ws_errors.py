"""Refused WebSockets: the close code each domain error gets, in one table (``gateway/errors.py`` is HTTP's)."""

from __future__ import annotations

from gateway.admission import Overloaded, RateLimited
from signaling.closecodes import CloseCode
from signaling.events import TooManySubscribers

# Errors that say "not now": the same request may succeed later. Every other refusal is final.
CLOSE_CODES: dict[type[Exception], CloseCode] = {
    Overloaded: CloseCode.TRY_AGAIN_LATER,
    RateLimited: CloseCode.TRY_AGAIN_LATER,
    TooManySubscribers: CloseCode.TRY_AGAIN_LATER,
}


def close_code(error: Exception) -> CloseCode:
    """The code to close with when ``error`` refuses a WebSocket."""
    return next((code for kind, code in CLOSE_CODES.items() if isinstance(error, kind)), CloseCode.POLICY_VIOLATION)
