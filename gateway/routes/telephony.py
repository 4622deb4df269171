"""Telephony: every carrier's markup webhook and media stream socket (gateway/carriers.py); the AudioSocket server's wiring."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from gateway.auth import NOBODY, accept, caller_of
from gateway.carriers import CARRIERS, PREFIX, Carrier, SignedRequest
from gateway.dependencies import get_services, get_settings
from gateway.services import Services
from gateway.settings import Settings
from media import vad
from signaling.audiosocket import AudioSocketCall, AudioSocketServer
from signaling.carrier import WebSocketCall
from signaling.closecodes import CloseCode
from signaling.session import Transport

router = APIRouter(tags=["telephony"])
log = logging.getLogger(__name__)

STREAM_PARAMETERS = ("voice", "text", "mode", "speed", "instruct_text")


@router.post(PREFIX + "{carrier}/voice", response_class=Response)
async def carrier_voice(carrier: str, request: Request, settings: Settings = Depends(get_settings)) -> Response:
    """The carrier's markup (TwiML, TeXML, Plivo XML, ...) that connects the call to our media stream socket.

    Query parameters ``voice``, ``text`` (what the call says first), ``mode``,
    ``speed`` and ``instruct_text`` become the stream's custom parameters; an
    ``api_key`` goes into the stream's URL where the carrier does not sign its
    socket, so that the socket is let in with API keys on.
    """
    known = CARRIERS.get(carrier)
    if known is None or known.markup is None:
        raise HTTPException(404, f"no markup webhook for carrier {carrier!r}")
    signing = known.signing_for(settings.telephony)
    if signing is not None:
        if not signing.verify(await _signed_request(request, settings)):
            raise HTTPException(403, f"invalid {known.name} signature")
    stream_url = _public_url(request, settings, path=f"{PREFIX}{known.name}/stream", query=False).replace("http", "ws", 1)
    if (key := request.query_params.get("api_key")) and not known.signs_stream:
        stream_url += "?" + urlencode({"api_key": key})  # the carrier's socket cannot sign itself: it shows our key
    parameters = {name: request.query_params[name] for name in STREAM_PARAMETERS if name in request.query_params}
    document = known.markup(stream_url, parameters)
    return Response(document.body, media_type=document.media_type)


@router.websocket(PREFIX + "{carrier}/stream")
async def carrier_stream(websocket: WebSocket, carrier: str, services: Services = Depends(get_services)) -> None:
    settings = services.settings
    known = CARRIERS.get(carrier)
    if known is None:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse({"detail": f"unknown carrier {carrier!r}"}, 404))
        else:
            await websocket.close(code=CloseCode.POLICY_VIOLATION)  # before accept: the upgrade is answered 403
        return
    signing = known.signing_for(settings.telephony) if known.signs_stream else None
    if signing is not None:
        url = _public_url(websocket, settings).replace("http", "ws", 1)
        if not signing.verify(SignedRequest(websocket.headers, url, form=[])):
            log.warning("refused a %s stream with an invalid signature", known.name)
            await websocket.close(code=CloseCode.POLICY_VIOLATION)  # before accept: the upgrade is answered 403
            return
    await accept(websocket, known.subprotocol)
    call = WebSocketCall(
        websocket,
        known.serializer(),
        _session_opener(known, websocket, services),
        lead=settings.session.lead_ms / 1000,
        barge_in=settings.telephony.barge_in and vad.available(),
    )
    await call.run()


def _session_opener(carrier: Carrier, websocket: WebSocket, services: Services):
    """Opens the call's session at the stream's rate, owned by the key that opened the socket or else the carrier's owner."""
    # A signed carrier's call is the carrier's (see telephony_caller); with no secret the socket needed a key, whose call it is.
    caller = caller_of(websocket)
    caller = services.telephony_caller if caller == NOBODY else caller
    key = websocket.scope.get("state", {}).get("api_key")

    # Parameters in the stream URL's query (where the markup puts them, or Exotel's applet does) under the start's own.
    query = {name: websocket.query_params[name] for name in STREAM_PARAMETERS if name in websocket.query_params}

    def open_session(parameters: dict[str, str], rate: int):
        return services.session_factory.open(carrier.transport, rate, query | parameters, owner=key, caller=caller)

    return open_session


def audiosocket_server(services: Services) -> AudioSocketServer:
    settings = services.settings
    telephony = settings.telephony

    def make_call(reader, writer) -> AudioSocketCall:
        return AudioSocketCall(
            reader,
            writer,
            lambda call_id, rate: services.session_factory.open(
                Transport.AUDIOSOCKET, rate, {}, session_id=call_id, caller=services.telephony_caller
            ),
            lead=settings.session.lead_ms / 1000,
            barge_in=telephony.barge_in and vad.available(),
            greeting=telephony.audiosocket_greeting,
        )

    return AudioSocketServer(telephony.audiosocket_host, telephony.audiosocket_port, make_call)


async def _signed_request(request: Request, settings: Settings) -> SignedRequest:
    """The webhook as its carrier signed it: the public URL, headers, form fields (for a form body) and raw body."""
    body = await request.body()  # read first: the form is parsed from the cached body
    form = None
    if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        fields = await request.form()
        form = [(name, value) for name, value in fields.multi_items() if isinstance(value, str)]
    return SignedRequest(request.headers, _public_url(request, settings), form, body)


def _public_url(connection: Request | WebSocket, settings: Settings, *, path: str | None = None, query: bool = True) -> str:
    """The URL the carrier used (or will use): the configured public base, or the request's own."""
    url = connection.url
    base = settings.telephony.public_url.rstrip("/") or f"{url.scheme}://{url.netloc}"
    base = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    tail = path or url.path
    if query and url.query and path is None:
        tail += "?" + url.query
    return base + tail
