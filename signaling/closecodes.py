"""WebSocket close codes (RFC 6455, section 7.4.1): the ones this server sends, by what they mean."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000  # done: the stream ended, the call hung up, the session closed
    POLICY_VIOLATION = 1008  # refused: a request we cannot serve (bad input, no such session, a bad signature)
    INTERNAL_ERROR = 1011  # the server failed mid-stream (synthesis broke off)
    TRY_AGAIN_LATER = 1013  # busy (over capacity, rate-limited): the same request may succeed later
