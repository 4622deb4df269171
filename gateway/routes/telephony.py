"""Telephony: Twilio's TwiML webhook and Media Streams socket; the AudioSocket server's wiring."""

from __future__ import annotations

import logging
from xml.sax.saxutils import quoteattr

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket
from fastapi.responses import Response

from gateway.auth import NOBODY, accept, caller_of
from gateway.dependencies import get_services, get_settings
from gateway.services import Services
from gateway.settings import Settings
from media import vad
from signaling.audiosocket import AudioSocketCall, AudioSocketServer
from signaling.closecodes import CloseCode
from signaling.session import Transport
from signaling.twilio import TwilioCall
from signaling.twilio_signature import TwilioSigning

router = APIRouter(tags=["telephony"])
log = logging.getLogger(__name__)

STREAM_PATH = "/v1/telephony/twilio/stream"
STREAM_PARAMETERS = ("voice", "text", "mode", "speed", "instruct_text")


@router.post("/v1/telephony/twilio/voice", response_class=Response)
async def twilio_voice(request: Request, settings: Settings = Depends(get_settings)) -> Response:
    """TwiML that connects the call to our Media Streams socket.

    Query parameters ``voice``, ``text`` (what the call says first), ``mode``,
    ``speed`` and ``instruct_text`` become the stream's custom parameters.
    """
    signing = _signing(settings)
    if signing.enabled:
        params, body = await _signed_content(request)
        if not signing.verify(request.headers, _public_url(request, settings), params, body):
            raise HTTPException(403, "invalid X-Twilio-Signature")
    stream_url = _public_url(request, settings, path=STREAM_PATH, query=False).replace("http", "ws", 1)
    parameters = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(request.query_params[name])}/>"
        for name in STREAM_PARAMETERS
        if name in request.query_params
    )
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>{parameters}</Stream></Connect></Response>"
    )
    return Response(twiml, media_type="application/xml")


@router.websocket(STREAM_PATH)
async def twilio_stream(websocket: WebSocket, services: Services = Depends(get_services)) -> None:
    settings = services.settings
    signing = _signing(settings)
    if signing.enabled:
        url = _public_url(websocket, settings).replace("http", "ws", 1)
        if not signing.verify(websocket.headers, url):
            log.warning("refused a Twilio stream with an invalid signature")
            await websocket.close(code=CloseCode.POLICY_VIOLATION)  # before accept: the upgrade is answered 403
            return
    await accept(websocket)
    # Twilio's own call is the carrier's (see telephony_caller); with no auth token the socket needed a key, whose call it is.
    caller = caller_of(websocket)
    caller = services.telephony_caller if caller == NOBODY else caller
    key = websocket.scope.get("state", {}).get("api_key")
    call = TwilioCall(
        websocket,
        lambda parameters: services.session_factory.open(Transport.TWILIO, 8000, parameters, owner=key, caller=caller),
        lead=settings.session.lead_ms / 1000,
        barge_in=settings.telephony.barge_in and vad.available(),
    )
    await call.run()


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


def _signing(settings: Settings) -> TwilioSigning:
    return TwilioSigning(settings.telephony.twilio_auth_token, settings.telephony.twilio_shared_key_secret)


async def _signed_content(request: Request) -> tuple[list[tuple[str, str]], bytes | None]:
    """What Twilio signed besides the URL: every form field, repeats kept; or, for another body, the raw body."""
    if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        return [(name, value) for name, value in form.multi_items() if isinstance(value, str)], None
    return [], await request.body()


def _public_url(connection: Request | WebSocket, settings: Settings, *, path: str | None = None, query: bool = True) -> str:
    """The URL Twilio used (or will use): the configured public base, or the request's own."""
    url = connection.url
    base = settings.telephony.public_url.rstrip("/") or f"{url.scheme}://{url.netloc}"
    base = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    tail = path or url.path
    if query and url.query and path is None:
        tail += "?" + url.query
    return base + tail
