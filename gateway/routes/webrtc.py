"""WebRTC signaling: a JSON offer/answer endpoint, WHEP playback, and WHIP's shape for receiving clients.

A session only speaks, so playback is WHEP (the client POSTs an offer to receive
audio). ``/v1/whip`` answers the same receiving offers, as it always has; a real
WHIP client's send-only (ingest) offer could never hear anything, so it gets a 400
that points to WHEP.
"""

from __future__ import annotations

from collections import OrderedDict

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, StrictFloat

from cosyvoice import InvalidRequest
from gateway.auth import caller_of
from gateway.dependencies import get_services
from gateway.services import Services
from signaling.offers import OfferError, SendOnlyOffer
from signaling.session import Session, TextTooLong, Transport
from signaling.webrtc import OUTPUT_RATE, WebRTCPeer, ice_servers

router = APIRouter(tags=["WebRTC"])

SDP = "application/sdp"
WHEP = "/v1/whep"
WHIP = "/v1/whip"


class IssuedSessions:
    """The owners of the last ``limit`` WebRTC sessions opened here, by id.

    A client that closes its peer connection and then DELETEs its resource
    races the session's own close: the id leaves the live sessions before
    the close has finished. A DELETE of an id issued here lately answers 200
    whether its session is live or already over. Ids are random, so one
    record serves every app in the process.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._owners: OrderedDict[str, str | None] = OrderedDict()

    def add(self, session: Session) -> None:
        self._owners[session.id] = session.owner
        while len(self._owners) > self.limit:
            self._owners.popitem(last=False)

    def owner(self, session_id: str) -> tuple[bool, str | None]:
        """Whether the id was issued lately, and to whom."""
        return session_id in self._owners, self._owners.get(session_id)


issued = IssuedSessions(4096)  # ~100 bytes an id: a few hundred kB at most, hours of calls on a busy gateway


class Offer(BaseModel):
    sdp: str
    type: str = "offer"
    voice: str | None = None
    mode: str | None = None
    speed: StrictFloat | None = None
    text: str | None = None


@router.post("/v1/webrtc/offer")
async def offer(body: Offer, request: Request, services: Services = Depends(get_services)) -> dict:
    """``{sdp, type}`` (plus optional voice settings and first text) to ``{sdp, type, session_id}``."""
    session, answer = await _answer(request, services, body.sdp, body.type, body.model_dump(exclude={"sdp", "type"}))
    return {"sdp": answer.sdp, "type": answer.type, "session_id": session.id}


@router.post(WHEP, status_code=201, response_class=Response)
async def whep(request: Request, services: Services = Depends(get_services)) -> Response:
    """WHEP playback: an ``application/sdp`` offer to receive audio in, ``201 Created`` with the answer and
    the session's ``Location`` out. Query: ``voice``, ``mode``, ``speed``, ``text`` (first words)."""
    return await _create_resource(request, services, WHEP)


@router.post(WHIP, status_code=201, response_class=Response)
async def whip(request: Request, services: Services = Depends(get_services)) -> Response:
    """WHIP's exchange for clients whose offer receives audio (a send-only ingest offer is refused: use WHEP)."""
    return await _create_resource(request, services, WHIP)


@router.delete(WHEP + "/{session_id}", response_class=Response)
@router.delete(WHIP + "/{session_id}", response_class=Response)
async def delete_resource(session_id: str, request: Request, services: Services = Depends(get_services)) -> Response:
    """End the session (200); an id issued lately whose session already ended is a 200 too (DELETE is idempotent)."""
    caller = caller_of(request)
    session = services.sessions.get(session_id)
    if session is not None and session.transport is Transport.WEBRTC and caller.owns(session.owner):
        await session.close("WHEP/WHIP resource deleted")
        return Response(status_code=200)
    known, owner = issued.owner(session_id)
    if known and caller.owns(owner):
        return Response(status_code=200)
    raise HTTPException(404, f"no WebRTC session '{session_id}'")


@router.patch(WHEP + "/{session_id}", response_class=Response)
@router.patch(WHIP + "/{session_id}", response_class=Response)
async def patch_resource(session_id: str) -> Response:
    """Trickle ICE and ICE restarts are not supported: all candidates are in the answer."""
    return Response(status_code=405, headers={"Allow": "DELETE"})


async def _create_resource(request: Request, services: Services, base: str) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
        raise HTTPException(415, f"offers to {base} are {SDP}")
    sdp = (await request.body()).decode(errors="replace")
    session, answer = await _answer(request, services, sdp, "offer", dict(request.query_params))
    headers = {"Location": f"{base}/{session.id}"}
    link = _ice_server_links(services.settings.webrtc.ice_servers)
    if link:
        headers["Link"] = link
    return Response(answer.sdp, status_code=201, media_type=SDP, headers=headers)


def _ice_server_links(urls: list[str]) -> str:
    """The configured ICE servers as WHIP/WHEP ``Link: <url>; rel="ice-server"`` values (one header, comma-joined)."""
    links = []
    for server in ice_servers(urls):
        link = f'<{server.urls}>; rel="ice-server"'
        if server.username:
            link += f'; username="{server.username}"; credential="{server.credential}"; credential-type="password"'
        links.append(link)
    return ", ".join(links)


async def _answer(
    request: Request, services: Services, sdp: str, kind: str, fields: dict
) -> tuple[Session, object]:
    settings = services.settings
    try:
        session = services.session_factory.open(
            Transport.WEBRTC,
            OUTPUT_RATE,
            {k: v for k, v in fields.items() if v is not None},
            owner=getattr(request.state, "api_key", None),
        )
    except InvalidRequest as error:
        raise HTTPException(400, str(error)) from error
    try:
        peer = WebRTCPeer(
            session,
            services.session_factory.parse_voice,
            ice=settings.webrtc.ice_servers,
            bitrate=settings.session.opus_bitrate,
            connect_timeout=settings.webrtc.connect_timeout,
        )
        answer = await peer.answer(sdp, kind)
        if fields.get("text"):
            session.say(fields["text"], flush=True)
    except BaseException as error:
        # Whatever went wrong, the session and its peer connection go now, not at the idle timeout.
        await session.close("offer not answered")
        if isinstance(error, OfferError):
            hint = f"; the gateway sends speech and takes in no stream: play a session with WHEP, POST {WHEP}"
            raise HTTPException(400, str(error) + (hint if isinstance(error, SendOnlyOffer) else "")) from error
        if isinstance(error, TextTooLong):
            raise HTTPException(413, str(error)) from error
        raise
    issued.add(session)
    return session, answer
