"""API keys, tenants, per-key rate limits, and which paths are public.

Keys come from ``[auth] api_keys`` and ``[auth] admin_keys`` and from a keys
file (TOML, a list of ``[[keys]]`` tables with ``key``, ``name``,
``requests_per_minute``, ``max_sessions`` and ``admin``). With no keys at
all the gateway is open (local use). HTTP clients send
``Authorization: Bearer <key>``; WebSocket clients may also use the
``api_key`` query parameter or the subprotocol ``bearer.<key>`` (browsers
cannot set headers on a WebSocket).

A key's name is its tenant: sessions and saved voices belong to the name
that created them and are invisible to other tenants. Keys that share a name
are one tenant (two keys while one is rotated out). An admin key sees and
steers everything: operators, and bots that drive calls they did not open.
"""

from __future__ import annotations

import hmac
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admission import RateLimited
from gateway.carriers import carrier_of
from gateway.errors import error_response
from gateway.metrics import Metrics, RejectReason
from gateway.settings import Settings
from signaling.closecodes import CloseCode

SUBPROTOCOL_PREFIX = "bearer."
# How the ElevenLabs and Cartesia clients send their key (routes under /elevenlabs and /cartesia).
PROVIDER_KEY_HEADERS = ("xi-api-key", "x-api-key")
# WebSockets whose key may come in the first message instead (ElevenLabs' ``xi_api_key`` field):
# the middleware lets them in unauthenticated and the route calls :func:`authenticate_deferred`.
DEFERRED_AUTH_PREFIX = "/elevenlabs/"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a tenant (an API key's name), and whether it may act on every tenant's things."""

    tenant: str | None
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """Whether a session or voice owned by ``owner`` exists for this caller."""
        return self.admin or (self.tenant is not None and owner == self.tenant)


OPERATOR = Caller(None, admin=True)  # open mode (no keys), and calls no key opened
NOBODY = Caller(None)  # a public path while keys are on


@dataclass
class ApiKey:
    key: str
    name: str
    requests_per_minute: int = 0  # 0: no limit
    max_sessions: int = 0  # 0: no limit beyond the server's own
    admin: bool = False
    _tokens: float = field(default=0.0, repr=False)
    _refilled: float = field(default_factory=time.monotonic, repr=False)

    def spend(self) -> None:
        """Take one request from the key's token bucket, or raise ``RateLimited``."""
        if not self.requests_per_minute:
            return
        now = time.monotonic()
        per_second = self.requests_per_minute / 60
        self._tokens = min(self.requests_per_minute, self._tokens + (now - self._refilled) * per_second)
        self._refilled = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / per_second
            raise RateLimited(f"rate limit of {self.requests_per_minute} requests a minute for key '{self.name}'", retry_after=max(1, round(wait + 0.5)))
        self._tokens -= 1

    def __post_init__(self) -> None:
        self._tokens = float(self.requests_per_minute)

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.admin)


class KeyStore:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        auth = settings.auth
        keys = [ApiKey(key, f"key{n + 1}", auth.requests_per_minute, auth.max_sessions_per_key) for n, key in enumerate(auth.api_keys)]
        keys += [
            ApiKey(key, f"admin{n + 1}", auth.requests_per_minute, auth.max_sessions_per_key, admin=True)
            for n, key in enumerate(auth.admin_keys)
        ]
        generated = {key.name for key in keys}
        if auth.keys_file:
            path = Path(auth.keys_file)
            try:
                entries = tomllib.loads(path.read_text(encoding="utf-8")).get("keys", [])
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise ValueError(f"cannot read keys file {path}: {error}") from error
            for n, entry in enumerate(entries):
                if not isinstance(entry, dict) or not entry.get("key"):
                    raise ValueError(f"{path}: keys[{n}] needs a 'key'")
                name = str(entry.get("name", f"file-key{n + 1}"))
                if name in generated:  # one tenant by accident: its sessions and voices would be shared
                    raise ValueError(f"{path}: keys[{n}] is named '{name}', the name of a key from [auth]")
                if not isinstance(entry.get("admin", False), bool):
                    raise ValueError(f"{path}: keys[{n}].admin must be true or false")
                keys.append(
                    ApiKey(
                        str(entry["key"]),
                        name,
                        int(entry.get("requests_per_minute", auth.requests_per_minute)),
                        int(entry.get("max_sessions", auth.max_sessions_per_key)),
                        admin=entry.get("admin", False),
                    )
                )
        for name in {key.name for key in keys}:
            if len({key.admin for key in keys if key.name == name}) > 1:
                raise ValueError(f"keys named '{name}' are one tenant: all of them admin, or none")
        return cls(keys)

    def names(self) -> set[str]:
        return {key.name for key in self.keys}

    def telephony_caller(self, owner: str) -> Caller:
        """Who owns phone calls: ``[telephony] owner``'s tenant, or nobody (admins only) when unset.

        Calls with no owner resolve voices as the operator, since the carrier's
        parameters come from the operator's own (signed) configuration.
        """
        if not owner or self.open:
            return OPERATOR
        matching = [key for key in self.keys if key.name == owner]
        if not matching:
            raise ValueError(f"[telephony] owner '{owner}' is the name of no API key")
        return matching[0].caller

    @property
    def open(self) -> bool:
        return not self.keys

    def find(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        for key in self.keys:
            if hmac.compare_digest(key.key.encode(), presented.encode()):
                return key
        return None


def presented_key(scope: Scope) -> str | None:
    headers = Headers(scope=scope)
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    for header in PROVIDER_KEY_HEADERS:
        if headers.get(header):
            return headers[header].strip()
    if scope["type"] == "websocket":
        query = QueryParams(scope.get("query_string", b""))
        if query.get("api_key"):
            return query["api_key"]
        for protocol in scope.get("subprotocols", []):
            if protocol.startswith(SUBPROTOCOL_PREFIX):
                return protocol[len(SUBPROTOCOL_PREFIX) :]
    return None


class ApiKeyMiddleware:
    """Authenticate every request that needs it; rate-limit by key.

    Sets ``scope["state"]["caller"]`` on every request, and ``scope["state"]["api_key"]`` when a key was used.
    """

    def __init__(self, app: ASGIApp, *, keys: KeyStore, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.keys = keys
        self.settings = settings
        self.metrics = metrics

    def _public(self, path: str) -> bool:
        auth = self.settings.auth
        if path in ("/", "/console") or (path == "/v1/health" and auth.health_public) or (path == "/metrics" and auth.metrics_public):
            return True
        # Carriers cannot send our keys; their own signatures guard their routes when a secret is set.
        # A stream whose upgrade the carrier does not sign still needs a key (``?api_key=`` in its URL).
        carrier = carrier_of(path)
        signed = carrier is not None and carrier.signing_for(self.settings.telephony) is not None
        return signed and (carrier.signs_stream or not path.endswith("/stream"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.keys.open or self._public(scope["path"]):
            scope.setdefault("state", {})["caller"] = OPERATOR if self.keys.open else NOBODY
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        if presented is None and scope["type"] == "websocket" and scope["path"].startswith(DEFERRED_AUTH_PREFIX):
            state = scope.setdefault("state", {})
            state["caller"], state["deferred_auth"] = NOBODY, (self.keys, self.metrics)
            await self.app(scope, receive, send)
            return
        key = self.keys.find(presented)
        if key is None:
            self.metrics.rejects.labels(RejectReason.UNAUTHORIZED).inc()
            await self._deny(scope, receive, send, 401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
            return
        try:
            key.spend()
        except RateLimited as error:
            self.metrics.rejects.labels(RejectReason.RATE_LIMITED).inc()
            await self._deny(scope, receive, send, 429, str(error), {"Retry-After": str(error.retry_after)})
            return
        state = scope.setdefault("state", {})
        state["api_key"] = key
        state["caller"] = key.caller
        await self.app(scope, receive, send)

    async def _deny(self, scope: Scope, receive: Receive, send: Send, status: int, message: str, headers: dict[str, str]) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            code = CloseCode.POLICY_VIOLATION if status == 401 else CloseCode.TRY_AGAIN_LATER
            await send({"type": "websocket.close", "code": int(code), "reason": message[:120]})
            return
        await error_response(scope["path"], status, message, headers=headers)(scope, receive, send)


def authenticate_deferred(connection: HTTPConnection, presented: str | None) -> bool:
    """Authenticate a connection the middleware let in to show its key later; True when it may go on.

    Connections that were authenticated already (or need no key) pass; a key is spent from its rate limit.
    """
    state = connection.scope.setdefault("state", {})
    deferred = state.pop("deferred_auth", None)
    if deferred is None:
        return True
    keys, metrics = deferred
    key = keys.find(presented)
    if key is None:
        metrics.rejects.labels(RejectReason.UNAUTHORIZED).inc()
        return False
    try:
        key.spend()
    except RateLimited:
        metrics.rejects.labels(RejectReason.RATE_LIMITED).inc()
        return False
    state["api_key"], state["caller"] = key, key.caller
    return True


def caller_of(connection: HTTPConnection) -> Caller:
    """The caller the middleware found; anything it did not mark sees nobody's things."""
    return connection.scope.get("state", {}).get("caller", NOBODY)


async def accept(websocket, protocol: str | None = None) -> None:
    """Accept a WebSocket, echoing ``protocol`` if offered (a dialect's own, as jambonz's), else the
    ``bearer.<key>`` subprotocol if the client authenticated with one
    (browsers drop a connection whose offered subprotocols were all ignored)."""
    offered = websocket.scope.get("subprotocols", [])
    chosen = protocol if protocol in offered else next((p for p in offered if p.startswith(SUBPROTOCOL_PREFIX)), None)
    await websocket.accept(subprotocol=chosen)
