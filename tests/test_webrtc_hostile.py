"""Hostile WebRTC offers: a malformed offer is a 400 that frees its session and peer connection at once,
and an offer whose client never connects is reclaimed after ``[webrtc] connect_timeout``; neither holds capacity.

The gateway here has room for two WebRTC sessions, so one leaked session shows as a refused call.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from cosyvoice.replay import ReplayEngine
from gateway.client import WebRTCCall
from gateway.settings import Settings
from signaling.offers import MAX_MEDIA_SECTIONS, MAX_OFFER_CHARS
from support.servers import ServerThread
from support.waiting import until
from tests.test_hostile_limits import recording

CAPACITY = 2
CONNECT_TIMEOUT = 1.0  # seconds: a loopback peer connects in about 0.1 s
RECLAIM_SLACK = 3.0  # seconds past the timeout for the close itself on a loaded two-core machine
ROUTES = ("/v1/whep", "/v1/whip", "/v1/webrtc/offer")
SDP_BODY = {"content-type": "application/sdp"}
# Characters a one-character mutation puts in: SDP's own punctuation and line breaks, digits, letters,
# and what no SDP has (NUL, a non-ASCII letter).
MUTATIONS = ":= /-\r\n0 9ax\x00é"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    tmp = tmp_path_factory.mktemp("webrtc_hostile")
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp / "data")},
            "webrtc": {"host_addresses": ["127.0.0.1"], "connect_timeout": CONNECT_TIMEOUT},
            "limits": {"max_webrtc_sessions": CAPACITY},
        }
    )
    gateway = ServerThread(settings, engine=ReplayEngine(recording(Path(tmp) / "tone.wav"))).start()
    yield gateway
    gateway.stop()


async def _offer() -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer, as the bot client makes it: a receive-only audio section and a data channel."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("session")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _hostile_offers(sdp: str) -> list[str]:
    """One-character substitutions and deletions all over a valid offer, truncations, and offers that are not SDP."""
    rng = random.Random(14)
    offers = []
    for _ in range(90):
        at = rng.randrange(len(sdp))
        offers.append(sdp[:at] + rng.choice(MUTATIONS) + sdp[at + 1 :])
    for _ in range(20):
        at = rng.randrange(len(sdp))
        offers.append(sdp[:at] + sdp[at + 1 :])
    offers += [sdp[:length] for length in range(0, len(sdp), len(sdp) // 12)]
    audio = sdp[sdp.index("m=audio") : sdp.index("m=application")]
    offers += [
        "",
        "v=0",
        bytes(rng.randrange(256) for _ in range(600)).decode("latin-1"),
        sdp.replace("a=setup:actpass", "a=setup:sideways"),
        sdp.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 7 1"),
        sdp + "a=x" * (MAX_OFFER_CHARS // 3),
        sdp + audio * MAX_MEDIA_SECTIONS,
    ]
    return offers


async def _post(client: httpx.AsyncClient, route: str, sdp: str) -> tuple[httpx.Response, str | None]:
    """The response and the session it opened, if any."""
    if route == "/v1/webrtc/offer":
        response = await client.post(route, json={"sdp": sdp, "type": "offer"})
        return response, response.json().get("session_id") if response.status_code == 200 else None
    response = await client.post(route, content=sdp.encode("utf-8", "surrogateescape"), headers=SDP_BODY)
    return response, response.headers["location"].rsplit("/", 1)[1] if response.status_code == 201 else None


def _changed_lines(sdp: str, offer: str) -> list[str]:
    """What a failure message shows of a hostile offer: its lines that the valid one lacks (a few, shortened)."""
    valid = set(sdp.splitlines())
    return [line[:80] for line in offer.splitlines() if line not in valid][:3]


def _webrtc_sessions(gateway: ServerThread) -> set[str]:
    return {s.id for s in gateway.app.state.sessions.list() if s.transport == "webrtc"}


def _open_peer_connections() -> set[int]:
    """Every peer connection of this process (the gateway's and the test's) that is not closed, by id."""
    gc.collect()  # a closed session's peer connection is garbage now, unless something still holds it
    return {id(o) for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"}


async def test_malformed_offers_are_refused_and_hold_nothing(server: ServerThread) -> None:
    offerer, sdp = await _offer()
    before, peers_before = _webrtc_sessions(server), _open_peer_connections()
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for index, offer in enumerate(_hostile_offers(sdp)):
            route = ROUTES[index % len(ROUTES)]
            response, session_id = await _post(client, route, offer)
            statuses.append(response.status_code)
            what = f"{route}, offer {index} (changed: {_changed_lines(sdp, offer)})"
            assert response.status_code in (200, 201, 400), f"{what}: {response.status_code} {response.text}"
            if session_id is not None:  # the mutation left a valid offer: hang up as a client would
                assert (await client.delete(f"/v1/whep/{session_id}")).status_code == 200
            else:
                detail = response.json()["detail"]
                assert "offer" in detail or "SDP" in detail, f"{what}: unclear message {detail!r}"
            assert _webrtc_sessions(server) <= before, f"{what} left its session open"
        refused = statuses.count(400)  # about 50 of 150: the offer's random parts move it by a few
        assert 30 <= refused < len(statuses), f"{refused} of {len(statuses)} refused: the fuzz should hit both outcomes"
        assert _open_peer_connections() <= peers_before, "a refused offer's peer connection was not closed"
        for _ in range(CAPACITY):  # every place is free again: each valid offer is answered
            response, session_id = await _post(client, "/v1/whep", sdp)
            assert response.status_code == 201, response.text
        for session_id in _webrtc_sessions(server) - before:
            await client.delete(f"/v1/whep/{session_id}")
    await offerer.close()


async def test_an_offer_never_followed_by_ice_is_reclaimed(server: ServerThread) -> None:
    offerer, sdp = await _offer()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response, session_id = await _post(client, "/v1/whep", sdp)
    answered = time.monotonic()
    assert response.status_code == 201, response.text
    session = server.app.state.sessions.get(session_id)
    assert session is not None, "the session waits for its client"
    # The client never applies the answer, so ICE never starts.
    await until(lambda: session.closed, CONNECT_TIMEOUT + RECLAIM_SLACK, "the unconnected session reclaimed")
    assert time.monotonic() - answered >= CONNECT_TIMEOUT * 0.9, "reclaimed before its client had its time"
    assert "no connection" in session.close_reason
    assert server.app.state.sessions.get(session_id) is None
    await offerer.close()


async def test_a_connected_call_outlives_the_connect_timeout(server: ServerThread) -> None:
    async with WebRTCCall(server.url) as call:
        session = server.app.state.sessions.get(call.session_id)
        await asyncio.sleep(CONNECT_TIMEOUT * 2)
        assert not session.closed, session.close_reason
        await call.say("Still here.", flush=True)
        await call.wait_for("utterance.done", timeout=20)


async def test_too_much_first_text_is_refused_and_frees_its_session(server: ServerThread) -> None:
    offerer, sdp = await _offer()
    before = _webrtc_sessions(server)
    text = "word " * (server.app.state.settings.limits.max_session_text_chars // 5 + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.post("/v1/webrtc/offer", json={"sdp": sdp, "type": "offer", "text": text})
    assert response.status_code == 413, response.text
    assert _webrtc_sessions(server) <= before, "the refused session is closed at once"
    await offerer.close()
