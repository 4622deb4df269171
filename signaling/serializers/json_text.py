"""Text messages that carry one JSON object: the control of every WebSocket dialect but AudioSocket."""

from __future__ import annotations

import json

from signaling.serializers.base import Malformed, Message


def json_object(message: Message, what: str) -> dict:
    """The message's JSON object; :class:`Malformed` ("a ``what`` that is not a JSON object") for anything else."""
    try:
        fields = json.loads(message) if isinstance(message, str) else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        fields = None
    if not isinstance(fields, dict):
        raise Malformed(f"a {what} that is not a JSON object")
    return fields
