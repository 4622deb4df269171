"""WebRTC calls on loopback: the bot client, WHEP/WHIP clients, an RSA-certificate peer and GStreamer against the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import AudioStreamTrack, RTCCertificate, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from gateway.client import WebRTCCall
from gateway.routes.webrtc import _ice_server_links
from support.servers import ServerThread
from support.waiting import until
from tests.audio_checks import assert_speech_like, window_levels_db

SDP_BODY = {"content-type": "application/sdp"}
REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."


async def test_bot_hears_speech_that_starts_before_the_text_ends(gateway: ServerThread) -> None:
    async with WebRTCCall(gateway.url) as call:
        words = REPLY.split(" ")
        for index, word in enumerate(words):
            await call.say(word + " ", flush=index == len(words) - 1)
            await asyncio.sleep(0.08)
        last_piece = time.monotonic()
        await call.wait_for("utterance.done", timeout=60)
        at_done = len(call.arrivals)  # the track goes on (silence): take 300 ms more, the frames in flight included
        await until(lambda: len(call.arrivals) >= at_done + 15, 5, "the frames in flight at the end")
        audio = call.audio()
        levels = window_levels_db(audio, 48000)
        first_loud = next(i for i, level in enumerate(levels) if level > -45)
        first_loud_time = call.arrivals[first_loud]  # one 20 ms frame per arrival
        assert first_loud_time < last_piece, "speech was heard before the last words were sent"
        speech = audio[first_loud * 960 :]
        assert_speech_like(speech[: int(48000 * 6.5)], 48000, min_seconds=4, max_seconds=12)
        gaps = np.diff(call.arrivals[first_loud:])
        assert gaps.std() * 1000 < 5.0, f"inter-arrival jitter {gaps.std() * 1000:.2f} ms"
        assert abs(gaps.mean() - 0.02) < 0.002


async def test_cancel_silences_the_track(gateway: ServerThread) -> None:
    async with WebRTCCall(gateway.url) as call:
        await call.say(" ".join([REPLY] * 4), flush=True)
        await call.wait_for("utterance.first_audio")
        at_first = len(call.arrivals)
        await until(lambda: len(call.arrivals) >= at_first + 50, 10, "a second of the track after the first audio")
        await call.cancel()
        cancelled_at = time.monotonic()
        await call.wait_for("utterance.cancelled")
        # Nothing marks the absence of audio: hear the track for 600 ms after the cancel before judging it.
        await until(lambda: call.arrivals[-1] > cancelled_at + 0.6, 5, "the track after the cancel")
        session = gateway.app.state.sessions.get(call.session_id)
        assert session.buffer.buffered == 0
        levels = window_levels_db(call.audio(), 48000)
        loud_after = [t - cancelled_at for t, level in zip(call.arrivals, levels) if t > cancelled_at and level > -50]
        # The sender goes silent on its next 20 ms frame; what is still heard after
        # the cancel is what was already in flight and in the receiver's jitter buffer.
        assert not loud_after or max(loud_after) < 0.2, f"heard audio {max(loud_after) * 1000:.0f} ms after cancel"
        await until(lambda: gateway.engine.pool.busy == 0, 2, "engine idle")


async def _listening_peer(direction: str = "recvonly") -> tuple[RTCPeerConnection, list]:
    """An aiortc peer with an audio transceiver whose offer is ready, and the frames it will hear."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    heard: list = []

    async def listen(track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                heard.append(await track.recv())

    pc.on("track", lambda track: asyncio.ensure_future(listen(track)))
    if direction in ("sendonly", "sendrecv"):
        pc.addTransceiver(AudioStreamTrack(), direction=direction)
    else:
        pc.addTransceiver("audio", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, heard


async def _heard(heard: list, frames: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(heard) < frames and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("route", "direction"), [("/v1/whep", "recvonly"), ("/v1/whip", "recvonly"), ("/v1/whip", "sendrecv")]
)
async def test_whep_and_whip_create_play_and_delete(gateway: ServerThread, route: str, direction: str) -> None:
    pc, heard = await _listening_peer(direction)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post(
            route, params={"text": "Played over WHEP."}, content=pc.localDescription.sdp,
            headers=SDP_BODY,
        )  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/sdp"
        location = response.headers["location"]
        assert location.startswith(route + "/s_")
        session_id = location.rsplit("/", 1)[1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        await _heard(heard, 50, 20)
        assert len(heard) >= 50, "audio flows over the session"
        trickle = {"content-type": "application/trickle-ice-sdpfrag"}
        patch = await client.patch(location, content=b"a=candidate", headers=trickle)
        assert patch.status_code == 405 and patch.headers["allow"] == "DELETE"
        assert (await client.delete(location)).status_code == 200
        assert gateway.app.state.sessions.get(session_id) is None
        assert (await client.delete(location)).status_code == 200, "DELETE is idempotent for a session issued lately"
        assert (await client.delete(route + "/s_0000000000000000")).status_code == 404
    await pc.close()


def _webrtc_sessions(gateway: ServerThread) -> set[str]:
    return {s.id for s in gateway.app.state.sessions.list() if s.transport == "webrtc"}


async def test_whep_refuses_what_it_cannot_answer(gateway: ServerThread) -> None:
    before = _webrtc_sessions(gateway)
    pc, _ = await _listening_peer()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        wrong_type = await client.post("/v1/whep", content=pc.localDescription.sdp, headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
        assert (await client.get("/v1/whep")).status_code == 405
    await pc.close()
    assert _webrtc_sessions(gateway) <= before, "no session is left open"


async def test_a_whip_ingest_offer_is_refused_and_pointed_to_whep(gateway: ServerThread) -> None:
    """A real WHIP client sends a send-only offer: the session could never be heard, so it is refused."""
    before = _webrtc_sessions(gateway)
    pc, _ = await _listening_peer("sendonly")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post(
            "/v1/whip", params={"text": "Nobody hears this."}, content=pc.localDescription.sdp,
            headers=SDP_BODY,
        )  # fmt: skip
    await pc.close()
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "send-only" in detail and "/v1/whep" in detail, detail
    assert _webrtc_sessions(gateway) <= before, "the refused offer's session is closed"


async def test_delete_after_the_client_hung_up_first_is_ok(gateway: ServerThread) -> None:
    pc, _ = await _listening_peer()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post("/v1/whep", content=pc.localDescription.sdp, headers=SDP_BODY)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        session_id = response.headers["location"].rsplit("/", 1)[1]
        await until(lambda: pc.connectionState == "connected", 15, "connected")
        await pc.close()  # the client hangs up first; its session closes on its own
        await until(lambda: gateway.app.state.sessions.get(session_id) is None, 15, "session closed")
        assert (await client.delete(response.headers["location"])).status_code == 200


def test_configured_ice_servers_are_advertised_as_links() -> None:
    links = _ice_server_links(["stun:stun.example.net:3478", "turn:user:secret@turn.example.net:3478?transport=udp"])
    assert links == (
        '<stun:stun.example.net:3478>; rel="ice-server", '
        '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; username="user"; credential="secret"; '
        'credential-type="password"'
    )
    assert _ice_server_links([]) == ""


class GStreamerLikeCertificate(RTCCertificate):
    """An RSA DTLS identity with OpenSSL's broad suite list, as GStreamer's webrtcbin has (gstdtlsagent.c)."""

    @classmethod
    def generateCertificate(cls) -> GStreamerLikeCertificate:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key=key, cert=generate_certificate(key))

    def _create_ssl_context(self, srtp_profiles) -> SSL.Context:
        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        context.use_certificate(self._cert)
        context.use_privatekey(self._key)
        context.set_cipher_list(b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH")
        context.set_tlsext_use_srtp(b":".join(profile.openssl_profile for profile in srtp_profiles))
        return context


async def test_a_peer_with_an_rsa_certificate_connects(gateway: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offerer is the DTLS server (the gateway answers ``setup:active``), so its RSA certificate decides the suite."""
    with monkeypatch.context() as patch:
        patch.setattr(RTCCertificate, "generateCertificate", GStreamerLikeCertificate.generateCertificate)
        pc, heard = await _listening_peer()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post("/v1/whep", content=pc.localDescription.sdp, headers=SDP_BODY)
        assert response.status_code == 201
        assert "a=setup:active" in response.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        await _heard(heard, 50, 10)
        assert pc.connectionState == "connected" and len(heard) >= 50, f"{pc.connectionState}, {len(heard)} frames"
        assert (await client.delete(response.headers["location"])).status_code == 200
    await pc.close()


GSTREAMER_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi: GStreamer's bindings are not on PyPI
GSTREAMER_PROBE = (
    "import gi; [gi.require_version(n, v) for n, v in (('Gst', '1.0'), ('GstWebRTC', '1.0'), ('Nice', '0.1'))];"
    "from gi.repository import Gst; Gst.init(None);"
    "assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'nicesrc', 'dtlssrtpdec', 'rtpopusdepay', 'opusdec'))"
)


def test_gstreamer_webrtcbin_hears_a_whep_session(gateway: ServerThread, tmp_path: Path) -> None:
    """A WebRTC stack that is neither aiortc nor Chromium: libnice ICE, OpenSSL DTLS with an RSA certificate."""
    probe = [GSTREAMER_PYTHON, "-c", GSTREAMER_PROBE]
    if not Path(GSTREAMER_PYTHON).exists() or subprocess.run(probe, capture_output=True).returncode:
        pytest.skip("GStreamer's webrtcbin is not installed (apt-get install gstreamer1.0-plugins-bad gstreamer1.0-nice "
                    "gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gi)")  # fmt: skip
    out = tmp_path / "heard.f32"
    url = gateway.url + "/v1/whep?" + urllib.parse.urlencode({"text": REPLY})
    script = Path(__file__).with_name("gstreamer_whep.py")
    run = subprocess.run(
        [GSTREAMER_PYTHON, str(script), url, "--seconds", "5", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["status"] == 201 and result["location"].startswith("/v1/whep/s_"), result
    assert result["connection"] == "connected" and result["dtls"] == "connected", result
    assert result["delete_status"] == 200, result
    audio = np.fromfile(out, np.float32)
    levels = window_levels_db(audio, 48000)
    first_loud = next((i for i, level in enumerate(levels) if level > -45), None)
    assert first_loud is not None, "GStreamer decoded only silence"
    assert_speech_like(audio[first_loud * 960 :][: 48000 * 4], 48000, min_seconds=2, max_seconds=5)


async def test_bad_offers_are_refused(gateway: ServerThread) -> None:
    before = _webrtc_sessions(gateway)  # another test's session may still be closing
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        wrong_type = await client.post("/v1/whip", content="v=0", headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
        garbage = await client.post("/v1/whip", content="this is not sdp", headers={"content-type": "application/sdp"})
        assert garbage.status_code == 400
        no_audio = await client.post("/v1/webrtc/offer", json={"sdp": "v=0\r\n", "type": "offer"})
        assert no_audio.status_code == 400 and "no audio" in no_audio.json()["detail"]
        answer = await client.post("/v1/webrtc/offer", json={"sdp": "m=audio", "type": "answer"})
        assert answer.status_code == 400
        bad_voice = await client.post("/v1/webrtc/offer", json={"sdp": "m=audio", "voice": "nobody"})
        assert bad_voice.status_code == 400 and "unknown voice" in bad_voice.json()["detail"]
    assert _webrtc_sessions(gateway) <= before, "a refused offer's session is closed at once"


async def test_a_vanished_peer_frees_its_session(gateway: ServerThread) -> None:
    call = WebRTCCall(gateway.url)
    await call.connect()
    await call.say(" ".join([REPLY] * 4), flush=True)
    await call.wait_for("utterance.first_audio")
    session_id = call.session_id
    await call.pc.close()  # no DELETE, no goodbye on the data channel
    await until(lambda: gateway.app.state.sessions.get(session_id) is None, 15, "the vanished peer's session freed")
    await until(lambda: gateway.engine.pool.busy == 0, 2, "engine idle")
