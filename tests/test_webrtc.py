"""WebRTC calls between real aiortc peers on loopback: the bot client against the gateway."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gateway.client import WebRTCCall
from support.servers import ServerThread
from support.waiting import until
from tests.audio_checks import assert_speech_like, window_levels_db

REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."


async def test_bot_hears_speech_that_starts_before_the_text_ends(gateway: ServerThread) -> None:
    async with WebRTCCall(gateway.url) as call:
        words = REPLY.split(" ")
        for index, word in enumerate(words):
            await call.say(word + " ", flush=index == len(words) - 1)
            await asyncio.sleep(0.08)
        last_piece = time.monotonic()
        await call.wait_for("utterance.done", timeout=60)
        await asyncio.sleep(0.3)
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
        await asyncio.sleep(1.0)
        await call.cancel()
        cancelled_at = time.monotonic()
        await call.wait_for("utterance.cancelled")
        await asyncio.sleep(0.6)
        session = gateway.app.state.sessions.get(call.session_id)
        assert session.buffer.buffered == 0
        levels = window_levels_db(call.audio(), 48000)
        loud_after = [t - cancelled_at for t, level in zip(call.arrivals, levels) if t > cancelled_at and level > -50]
        # The sender goes silent on its next 20 ms frame; what is still heard after
        # the cancel is what was already in flight and in the receiver's jitter buffer.
        assert not loud_after or max(loud_after) < 0.2, f"heard audio {max(loud_after) * 1000:.0f} ms after cancel"
        await until(lambda: gateway.engine.pool.busy == 0, 2, "engine idle")


async def test_whip_create_and_delete(gateway: ServerThread) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    heard: list = []

    async def listen(track) -> None:
        while True:
            heard.append(await track.recv())

    pc.on("track", lambda track: asyncio.ensure_future(listen(track)))
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        response = await client.post(
            "/v1/whip", params={"text": "Published with WHIP."}, content=pc.localDescription.sdp,
            headers={"content-type": "application/sdp"},
        )  # fmt: skip
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/sdp"
        location = response.headers["location"]
        assert location.startswith("/v1/whip/s_")
        session_id = location.rsplit("/", 1)[1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        deadline = time.monotonic() + 20
        while len(heard) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(heard) >= 50, "audio flows over the WHIP session"
        assert (await client.patch(location, content=b"a=candidate")).status_code == 405
        assert (await client.delete(location)).status_code == 200
        assert gateway.app.state.sessions.get(session_id) is None
        assert (await client.delete(location)).status_code == 404
    await pc.close()


async def test_bad_offers_are_refused(gateway: ServerThread) -> None:
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
    assert not [s for s in gateway.app.state.sessions.list() if s.transport == "webrtc"]


async def test_a_vanished_peer_frees_its_session(gateway: ServerThread) -> None:
    call = WebRTCCall(gateway.url)
    await call.connect()
    await call.say(" ".join([REPLY] * 4), flush=True)
    await call.wait_for("utterance.first_audio")
    session_id = call.session_id
    await call.pc.close()  # no DELETE, no goodbye on the data channel
    deadline = time.monotonic() + 15
    while gateway.app.state.sessions.get(session_id) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert gateway.app.state.sessions.get(session_id) is None
    await until(lambda: gateway.engine.pool.busy == 0, 2, "engine idle")
