"""Secrets stay out of the logs: an API key sent as ``?api_key=`` is masked in every log line.

WebSocket clients that cannot set headers pass their key in the query
string, and uvicorn writes each request's path with its query into the
access log (HTTP) and its own log (WebSocket handshakes).
"""

from __future__ import annotations

import logging
import re

_QUERY_KEY = re.compile(r"([?&]api_key=)[^&\s\"']*", re.IGNORECASE)
MASK = "[redacted]"


def redact(text: str) -> str:
    return _QUERY_KEY.sub(rf"\g<1>{MASK}", text)


class RedactSecrets(logging.Filter):
    """Masks query-string keys in a record's message and arguments (as formatted later, lazily)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True
