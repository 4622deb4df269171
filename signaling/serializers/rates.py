"""Sample rates the far end names, checked against those the call can run at."""

from __future__ import annotations

from signaling.serializers.base import ProtocolViolation


def allowed_rate(value: object, allowed: tuple[int, ...], problem: str) -> int:
    """``value`` (a number or a numeric string) as one of ``allowed``; any other breaks the call with ``problem``."""
    try:
        rate = int(value)
    except (TypeError, ValueError):
        rate = 0
    if rate not in allowed:
        raise ProtocolViolation(problem)
    return rate
