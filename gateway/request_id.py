"""``x-request-id`` on every answer: the client's own id when it is sane, else a new one.

A pure ASGI middleware (``BaseHTTPMiddleware`` would buffer streamed audio),
wrapped around the whole app so that 500s from Starlette's outermost error
handler carry the id too. The id is kept in a context variable for the logs:
uvicorn writes its access line from inside the app's ``send``, so it sees it.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
# Room for a UUID, a W3C traceparent (55 characters) or an AWS trace id (~40);
# short enough that a client cannot bloat every log line it causes.
MAX_LENGTH = 128
_VALID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")
# The messages that open an answer: HTTP responses, WebSocket accepts and denials.
_STARTS = ("http.response.start", "websocket.accept", "websocket.http.response.start")

current: ContextVar[str] = ContextVar("request_id", default="-")


def request_id_for(headers: Headers) -> str:
    """The client's id if it is short and plain (it lands in logs and headers), else a fresh one."""
    offered = headers.get(HEADER, "")
    return offered if _VALID.fullmatch(offered) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets ``x-request-id`` on every response and WebSocket handshake; ``scope["state"]["request_id"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] in _STARTS:
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdLogFilter(logging.Filter):
    """Gives every record a ``request_id`` field (``-`` outside a request) for log formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True
