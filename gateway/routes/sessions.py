"""Real-time sessions: the WebSocket endpoint and the control API that drives any session.

``/ws/v1/session`` opens a session over a WebSocket. The control API works
on every session whatever its transport (WebSocket, WebRTC, telephony), so a
bot can steer a browser call or a phone call: list, say, cancel, close, and
follow the events over SSE or a WebSocket.

With API keys, a session belongs to the tenant whose key opened it: other
tenants get a 404 for it, as if it did not exist; admin keys reach every
session (phone calls with no ``[telephony] owner`` only them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, StrictBool
from starlette.requests import HTTPConnection

from cosyvoice import InvalidRequest
from gateway.admission import Overloaded, RateLimited
from gateway.auth import accept, caller_of
from gateway.dependencies import get_services
from gateway.errors import RETRY_AFTER_SECONDS
from gateway.services import Services
from gateway.streaming import SEND_TIMEOUT, BoundedStreamingResponse
from gateway.ws_errors import close_code
from signaling.closecodes import CloseCode
from signaling.events import TooManySubscribers
from signaling.lifecycle import race
from signaling.protocol import ProtocolError
from signaling.session import QueueFull, Session, SessionClosed, TextTooLong, Transport
from signaling.websocket import AudioFormat, WebSocketTransport

router = APIRouter(tags=["sessions"])

# Event watchers per session (SSE and WebSocket together): a bot, a dashboard or two, a recorder.
# More is a leak or a flood; each holds a connection and a queue of up to 1000 events.
MAX_WATCHERS = 16


class Say(BaseModel):
    text: str
    flush: StrictBool = False


@router.websocket("/ws/v1/session")
async def websocket_session(websocket: WebSocket, services: Services = Depends(get_services)) -> None:
    """Query: ``format`` (pcm|opus), ``sample_rate`` (pcm), ``voice``, ``mode``, ``speed``, ``text`` (first words)."""
    settings = services.settings
    query = websocket.query_params
    await accept(websocket)
    try:
        audio = AudioFormat.from_query(query.get("format"), query.get("sample_rate"))
        if len(query.get("text") or "") > (most := settings.limits.max_session_text_chars):
            raise ProtocolError(f"text of more than {most} characters; send it in messages")
        session = services.session_factory.open(
            Transport.WEBSOCKET, audio.sample_rate, dict(query), owner=websocket.scope.get("state", {}).get("api_key")
        )
    except (ProtocolError, InvalidRequest, Overloaded, RateLimited) as error:
        await websocket.send_json({"type": "error", "message": str(error)})
        await websocket.close(code=close_code(error), reason=str(error)[:120])
        return
    transport = WebSocketTransport(
        websocket,
        session,
        audio,
        services.session_factory.parse_voice,
        lead=settings.session.lead_ms / 1000,
        opus_bitrate=settings.session.opus_bitrate,
    )
    await transport.run(first_words=query.get("text") or "")


@router.get("/v1/sessions")
async def list_sessions(request: Request, services: Services = Depends(get_services)) -> dict:
    caller = caller_of(request)
    return {"sessions": [session.describe().to_dict() for session in services.sessions.list() if caller.owns(session.owner)]}


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, request: Request) -> dict:
    return _session(request, session_id).describe().to_dict()


@router.post("/v1/sessions/{session_id}/say")
async def say(session_id: str, body: Say, request: Request) -> dict:
    session = _session(request, session_id)
    try:
        utterance = session.say(body.text, flush=body.flush)
    except SessionClosed as error:
        raise HTTPException(409, str(error)) from error
    except TextTooLong as error:
        raise HTTPException(413, str(error)) from error
    except QueueFull as error:
        raise HTTPException(429, str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from error
    return {"session_id": session.id, "utterance_id": utterance.id}


@router.post("/v1/sessions/{session_id}/flush")
async def flush(session_id: str, request: Request) -> dict:
    utterance = _session(request, session_id).flush()
    return {"session_id": session_id, "utterance_id": utterance.id if utterance else None}


@router.post("/v1/sessions/{session_id}/cancel")
async def cancel(session_id: str, request: Request) -> dict:
    """Barge-in; says what the listener heard of each cut utterance (``heard_text``), to truncate a transcript."""
    session = _session(request, session_id)
    cancelled = session.cancel("control api")
    rate = session.buffer.sample_rate
    return {
        "session_id": session_id,
        "cancelled": cancelled,
        "utterances": [session.utterances[u].summary(rate).to_dict() for u in cancelled if u in session.utterances],
    }


@router.delete("/v1/sessions/{session_id}", status_code=204, response_class=Response)
async def close(session_id: str, request: Request) -> Response:
    await _session(request, session_id).close("closed by control api")
    return Response(status_code=204)


@router.get("/v1/sessions/{session_id}/events")
async def events_sse(session_id: str, request: Request) -> StreamingResponse:
    """The session's events as server-sent events, until the session closes."""
    try:
        subscription = _session(request, session_id).events.subscribe(limit=MAX_WATCHERS)
    except TooManySubscribers as error:
        raise HTTPException(429, str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from error

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            async for event in subscription:
                yield f"event: {event.kind.value}\ndata: {event.to_json()}\n\n".encode()
        finally:
            subscription.close()

    return BoundedStreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.websocket("/v1/sessions/{session_id}/events")
async def events_ws(websocket: WebSocket, session_id: str) -> None:
    session = _find(websocket, session_id)
    await accept(websocket)
    if session is None:
        await websocket.close(code=CloseCode.POLICY_VIOLATION, reason="no such session")
        return
    try:
        subscription = session.events.subscribe(limit=MAX_WATCHERS)
    except TooManySubscribers as error:
        await websocket.close(code=close_code(error), reason=str(error)[:120])
        return

    async def forward() -> None:
        async for event in subscription:
            async with asyncio.timeout(SEND_TIMEOUT):  # a watcher that stopped reading is let go
                await websocket.send_text(event.to_json())
        await websocket.close()

    async def listen() -> None:
        """Nothing a watcher sends means anything; reading it notices the watcher leave on a quiet session."""
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    try:
        await race(forward(), listen())  # whichever ends (or fails: the watcher went away) ends the other
    finally:
        subscription.close()


def _session(request: Request, session_id: str) -> Session:
    session = _find(request, session_id)
    if session is None:
        raise HTTPException(404, f"no session '{session_id}'")
    return session


def _find(connection: HTTPConnection, session_id: str) -> Session | None:
    """The session, if it exists for this caller (another tenant's does not)."""
    session = get_services(connection).sessions.get(session_id)
    return session if session is not None and caller_of(connection).owns(session.owner) else None
