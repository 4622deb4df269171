"""Any edge serves any session's control API: a session directory in the Ray cluster, the owner forwarding.

Each edge publishes the ids of its live sessions to one detached Ray actor twice a second; a control
request (``/v1/sessions/{id}...``, WHIP/WHEP ``DELETE``) for a session this edge does not hold is sent
on, as it came (its key included: the owner checks it), to the edge that does; the events WebSocket
is relayed from the owner's (``gateway.relay``). An edge that stops publishing (it died) drops out
after ``EXPIRY`` seconds. Forwarded requests are never forwarded again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import ray
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.relay import relay_websocket
from gateway.streaming import SEND_TIMEOUT
from signaling.manager import SessionManager

log = logging.getLogger("gateway.directory")

ACTOR = "cosyvoice-session-directory"
NAMESPACE = "cosyvoice"
PUBLISH_EVERY = 0.5  # seconds: how soon another edge can steer a new session
EXPIRY = 5.0  # seconds without a publication before an edge's sessions are forgotten (ten missed in a row)
FORWARDED = b"x-forwarded-by-edge"
CONTROL_PATH = re.compile(r"^/v1/(?:sessions|whep|whip)/([A-Za-z0-9_-]+)")


@ray.remote(num_cpus=0)
class DirectoryActor:
    """Which edge holds which session: one table for the cluster."""

    def __init__(self) -> None:
        self._edges: dict[str, tuple[float, frozenset[str]]] = {}

    def publish(self, edge: str, sessions: list[str]) -> None:
        self._edges[edge] = (time.monotonic(), frozenset(sessions))

    def owner(self, session_id: str) -> str | None:
        now = time.monotonic()
        self._edges = {edge: entry for edge, entry in self._edges.items() if now - entry[0] < EXPIRY}
        return next((edge for edge, (_, ids) in self._edges.items() if session_id in ids), None)


class SessionDirectory:
    """This edge's view: publishes its sessions, and finds another edge's."""

    def __init__(self, url: str, sessions: SessionManager) -> None:
        self.url = url.rstrip("/")
        self._sessions = sessions
        self._actor = None

    def _directory(self):
        if self._actor is None:
            self._actor = DirectoryActor.options(
                name=ACTOR, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote()
        return self._actor

    async def run(self) -> None:
        while True:
            try:
                await self._directory().publish.remote(self.url, [session.id for session in self._sessions.list()])
            except ray.exceptions.RayError as error:  # the directory restarts with the cluster: keep trying
                log.warning("session directory unreachable: %s", error)
                self._actor = None
            await asyncio.sleep(PUBLISH_EVERY)

    async def owner(self, session_id: str) -> str | None:
        return await self._directory().owner.remote(session_id)


class SessionForwarding:
    """ASGI middleware: a control request for a session another edge holds is answered by that edge."""

    def __init__(self, app: ASGIApp, directory: SessionDirectory, sessions: SessionManager) -> None:
        self.app = app
        self.directory = directory
        self.sessions = sessions
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = await self._owner(scope) if scope["type"] in ("http", "websocket") else None
        if owner is None:
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length")] + [(FORWARDED, b"1")]
        url = owner + scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        if scope["type"] == "websocket":  # http://edge -> ws://edge, https:// -> wss://
            await relay_websocket("ws" + url.removeprefix("http"), headers, scope, receive, send)
            return
        parts = []  # as long as the size limit outside lets through
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        request = self._client.build_request(scope["method"], url, headers=headers, content=b"".join(parts))
        response = await self._client.send(request, stream=True)
        try:
            passed = [(k.lower().encode(), v.encode()) for k, v in response.headers.items()
                      if k.lower() not in ("content-length", "transfer-encoding", "connection")]  # fmt: skip
            await send({"type": "http.response.start", "status": response.status_code, "headers": passed})
            async for chunk in response.aiter_raw():  # SSE event streams pass through as they come
                async with asyncio.timeout(SEND_TIMEOUT):  # a client that stopped reading is let go, as the owner would
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except TimeoutError:
            log.info("forwarded %s: the client stopped reading; let go", scope["path"])
        finally:
            await response.aclose()

    async def _owner(self, scope: Scope) -> str | None:
        match = CONTROL_PATH.match(scope["path"])
        if match is None or self.sessions.get(match.group(1)) is not None:
            return None
        if any(key == FORWARDED for key, _ in scope["headers"]):
            return None
        owner = await self.directory.owner(match.group(1))
        return owner if owner and owner != self.directory.url else None
