"""WebRTC signaling: a JSON offer/answer endpoint and WHIP (RFC 9725)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cosyvoice import InvalidRequest
from gateway.auth import caller_of
from gateway.settings import Settings
from signaling.session import Session
from signaling.webrtc import OUTPUT_RATE, OfferError, WebRTCPeer

router = APIRouter(tags=["WebRTC"])


class Offer(BaseModel):
    sdp: str
    type: str = "offer"
    voice: str | None = None
    mode: str | None = None
    speed: float | None = None
    text: str | None = None


@router.post("/v1/webrtc/offer")
async def offer(body: Offer, request: Request) -> dict:
    """``{sdp, type}`` (plus optional voice settings and first text) to ``{sdp, type, session_id}``."""
    session, answer = await _answer(request, body.sdp, body.type, body.model_dump(exclude={"sdp", "type"}))
    return {"sdp": answer.sdp, "type": answer.type, "session_id": session.id}


@router.post("/v1/whip", status_code=201, response_class=Response)
async def whip(request: Request) -> Response:
    """WHIP: an ``application/sdp`` offer in, ``201 Created`` with the answer and the session's ``Location``."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
        raise HTTPException(415, "WHIP offers are application/sdp")
    sdp = (await request.body()).decode(errors="replace")
    session, answer = await _answer(request, sdp, "offer", dict(request.query_params))
    location = f"/v1/whip/{session.id}"
    return Response(answer.sdp, status_code=201, media_type="application/sdp", headers={"Location": location})


@router.delete("/v1/whip/{session_id}", response_class=Response)
async def whip_delete(session_id: str, request: Request) -> Response:
    session = request.app.state.sessions.get(session_id)
    if session is None or session.transport != "webrtc" or not caller_of(request).owns(session.owner):
        raise HTTPException(404, f"no WHIP session '{session_id}'")
    await session.close("WHIP resource deleted")
    return Response(status_code=200)


@router.patch("/v1/whip/{session_id}", response_class=Response)
async def whip_patch(session_id: str) -> Response:
    """Trickle ICE and ICE restarts are not supported: all candidates are in the answer."""
    return Response(status_code=405, headers={"Allow": "DELETE"})


async def _answer(request: Request, sdp: str, kind: str, fields: dict) -> tuple[Session, object]:
    settings: Settings = request.app.state.settings
    try:
        session = request.app.state.session_factory.open(
            "webrtc",
            OUTPUT_RATE,
            {k: v for k, v in fields.items() if v is not None},
            owner=getattr(request.state, "api_key", None),
        )
    except InvalidRequest as error:
        raise HTTPException(400, str(error)) from error
    peer = WebRTCPeer(
        session,
        request.app.state.session_factory.parse_voice,
        ice=settings.webrtc.ice_servers,
        bitrate=settings.session.opus_bitrate,
    )
    try:
        answer = await peer.answer(sdp, kind)
    except OfferError as error:
        await session.close("bad offer")
        raise HTTPException(400, str(error)) from error
    if fields.get("text"):
        session.say(fields["text"], flush=True)
    return session, answer
