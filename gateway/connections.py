"""HTTP connections that never become requests: a deadline on the request head.

uvicorn closes a keep-alive connection that sits idle between requests, but
not one that is still sending its request line and headers, nor one that
sends nothing at all: a client that sends a byte every few seconds
(slowloris) holds a socket and its buffers for as long as it likes, and a
few thousand of them exhaust the process's descriptors. Here every request
head (a new connection's first, or a keep-alive connection's next) must be
complete within ``head_timeout`` seconds, or the connection is closed.
Once the head is in, the route's own limits apply (body size, admission,
the WebSocket handshake's config timeout).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import ServerSettings

log = logging.getLogger(__name__)


def server_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn's connection options from ``[server]``: the command line's server and the tests' alike."""
    return {
        "http": functools.partial(HeadDeadlineProtocol, head_timeout=server.request_head_timeout),
        "limit_concurrency": server.max_connections,
        "ws_per_message_deflate": server.websocket_compression,
    }


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request head does not arrive in time."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a keep-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "?"
            log.info("closed a connection from %s: no complete request head within %g s", client, self.head_timeout)
            self.transport.close()
