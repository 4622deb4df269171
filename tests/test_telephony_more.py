"""Vonage, jambonz, FreeSWITCH (mod_audio_stream) and Asterisk (chan_websocket) calls against protocol simulators.

Each simulator (support/carrier_peers.py) is built from its carrier's
documentation and drives real calls against a running gateway over loopback.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import websockets

from gateway.settings import Settings
from media.resample import resample
from signaling.jambonz_signature import jambonz_signature
from signaling.vonage_signature import vonage_token
from support.carrier_peers import CarrierPeer, ChanWebSocketPeer, FreeSwitchPeer, JambonzPeer, VonagePeer
from support.servers import ServerThread
from support.waiting import until
from tests.agent_checks import assert_engine_free
from tests.audio_checks import assert_speech_like, decode_b64_wav, window_levels_db
from tests.test_telephony import REPLY, Events

LEAD = 0.1  # the gateway's lead here (session.lead_ms)
# A message may come a frame early on top of the lead: the pacer wakes on the event loop's timer, which
# rounds, and the loopback socket can deliver two frames in one read.
SLACK = 0.03
MARKED = ("vonage", "jambonz", "asterisk")  # dialects with marks and a clear; mod_audio_stream has neither
DIALECTS = (*MARKED, "freeswitch")
VONAGE_SECRET = "vonage-signature-secret-0123456789"
JAMBONZ_SECRET = "jambonz-webhook-secret-0123456789"
RATES = {"vonage": 16000, "jambonz": 8000, "asterisk": 16000, "freeswitch": 8000}  # as our markup / dial string asks


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path_factory.mktemp("phone"))},
            "session": {"lead_ms": round(LEAD * 1000)},
            "telephony": {"vonage_signature_secret": VONAGE_SECRET, "jambonz_webhook_secret": JAMBONZ_SECRET},
        }
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def caller_speech(phone: ServerThread) -> dict[int, np.ndarray]:
    """A caller saying something, starting right on voiced speech, at each rate the calls run at."""
    body = httpx.post(phone.url + "/v1/tts", json={"text": "Hold on, I have a question about that.", "seed": 2}, timeout=30).json()
    samples, rate = decode_b64_wav(body["audio"])
    speech = {}
    for target in (8000, 16000):
        resampled = resample(samples, rate, target)
        levels = window_levels_db(resampled, target)
        first = int(np.argmax(levels > levels.max() - 25))
        speech[target] = resampled[first * target // 50 :] * 1.5
    return speech


def peer_for(server: ServerThread, dialect: str, parameters: dict[str, str] | None = None) -> CarrierPeer:
    url = server.url.replace("http", "ws") + f"/v1/telephony/{dialect}/stream"
    if dialect == "vonage":
        return VonagePeer(url, rate=RATES[dialect], parameters=parameters)
    if dialect == "jambonz":
        return JambonzPeer(url, rate=RATES[dialect], parameters=parameters)
    if dialect == "freeswitch":
        return FreeSwitchPeer(url, rate=RATES[dialect], parameters=parameters)
    return ChanWebSocketPeer(url, format="slin16", parameters=parameters)


def sessions(server: ServerThread, dialect: str) -> list:
    return [s for s in server.app.state.sessions.list() if s.transport == dialect]


async def call(server: ServerThread, dialect: str, peer: CarrierPeer | None = None, **parameters: str) -> CarrierPeer:
    known = {session.id for session in sessions(server, dialect)}
    peer = peer or peer_for(server, dialect, parameters)
    await peer.connect()
    await until(lambda: any(s.id not in known for s in sessions(server, dialect)), 5, f"the {dialect} call's session")
    return peer


def newest(server: ServerThread, dialect: str):
    return sessions(server, dialect)[-1]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_greeting_is_speech_paced_at_real_time_and_marked(phone: ServerThread, dialect: str) -> None:
    peer = await call(phone, dialect, text=REPLY)
    try:
        events = Events(phone, newest(phone, dialect).id)
        done = await events.wait("utterance.done")
        audio = peer.heard()
        assert_speech_like(audio, peer.rate, min_seconds=3.5, max_seconds=14)
        assert {len(audio) for _, audio in peer.received} == {peer.frame}, "20 ms of audio per message"
        first = peer.received[0][0]
        for index, (at, _) in enumerate(peer.received):
            early = index * 0.02 - (at - first)
            assert early <= LEAD + SLACK, f"message {index} came {early:.3f} s early"
        assert peer.received[-1][0] - first > len(peer.received) * 0.02 - LEAD - SLACK, "sent no faster than played"
        if dialect in MARKED:
            heard_until = max(at for at, frame in peer.played if np.abs(frame).max() > 0.01)
            assert done[0] >= heard_until, "done is reported only after the caller heard the last audio"
            assert any(name.startswith("end-") for _, name in peer.marks_echoed)
            assert done[1]["played_ms"] == done[1]["audio_ms"]
    finally:
        await peer.close()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_callers_first_word_stops_our_speech_within_150_ms(
    phone: ServerThread, dialect: str, caller_speech: dict[int, np.ndarray]
) -> None:
    peer = await call(phone, dialect, text=" ".join([REPLY] * 3))
    try:
        events = Events(phone, newest(phone, dialect).id)
        await until(lambda: len(peer.played) >= 60 and any(np.abs(a).max() > 0.05 for _, a in peer.played[-5:]), 20, "speech playing")
        await peer.say(caller_speech[peer.rate])
        barge_at, event = await events.wait("barge_in", timeout=5)
        assert event["utterances"] == ["u1"]
        if dialect in MARKED:
            await until(lambda: peer.clears, 2, "barge-in clears what the far end holds")
            reaction = peer.clears[0] - peer.speech_sent_at
        else:  # no clear in mod_audio_stream: our audio stops, and the module holds at most the lead
            await asyncio.sleep(0.3)
            last_audio = max(at for at, _ in peer.received)
            reaction = last_audio - peer.speech_sent_at
        assert reaction < 0.15, f"{dialect}: our audio stopped {reaction * 1000:.0f} ms after the caller started speaking"
        await asyncio.sleep(0.3)
        stop = peer.clears[0] if peer.clears else barge_at
        late = [at for at, _ in peer.received if at > stop + 0.05]
        assert not late, f"{len(late)} audio messages after the barge-in"
    finally:
        await peer.close()


@pytest.mark.parametrize("dialect", MARKED)
async def test_dtmf_reaches_the_event_stream(phone: ServerThread, dialect: str) -> None:
    peer = await call(phone, dialect)
    try:
        events = Events(phone, newest(phone, dialect).id)
        await events.subscribed()
        await peer.dtmf("7")
        _, event = await events.wait("dtmf", timeout=5)
        assert event["digit"] == "7"
    finally:
        await peer.close()


@pytest.mark.parametrize("dialect", MARKED)
async def test_cancel_from_the_control_api_clears_the_far_end(phone: ServerThread, dialect: str) -> None:
    peer = await call(phone, dialect, text=" ".join([REPLY] * 3))
    try:
        session = newest(phone, dialect)
        await until(lambda: len(peer.received) >= 50, 20, "a second of audio")
        async with httpx.AsyncClient(base_url=phone.url) as client:
            assert (await client.post(f"/v1/sessions/{session.id}/cancel")).json()["cancelled"] == ["u1"]
        cancelled_at = time.monotonic()
        await until(lambda: peer.clears, 2, "the far end told to clear")
        assert peer.clears[0] - cancelled_at < 0.1
    finally:
        await peer.close()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_hanging_up_mid_utterance_leaves_nothing_behind(phone: ServerThread, dialect: str) -> None:
    peer = await call(phone, dialect, text=" ".join([REPLY] * 3))
    session = newest(phone, dialect)
    await until(lambda: len(peer.received) >= 25, 20, "half a second of audio")
    await peer.close()  # each of these carriers ends a call by closing the socket
    await until(lambda: phone.app.state.sessions.get(session.id) is None, 5, "the call's session closed")
    assert_engine_free(phone, timeout=5)


MALFORMED = {
    "vonage": ["{not json", "[1, 2]", '{"event": "websocket:mystery"}', b"\x00\x01\x02"],
    "jambonz": ["{not json", '{"type": "mark", "data": "m"}', '{"type": "mystery"}', b"\x00\x01\x02"],
    "asterisk": ["{not json", "   ", '{"event": "MYSTERY"}', b"\x00\x01\x02"],
    "freeswitch": ["{not json", '{"type": "mystery"}', "text", b"\x00\x01\x02"],
}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_messages_cost_only_themselves(phone: ServerThread, dialect: str) -> None:
    peer = await call(phone, dialect, text=REPLY)
    try:
        events = Events(phone, newest(phone, dialect).id)
        await events.subscribed()
        for message in MALFORMED[dialect]:
            await peer.send_raw(message)
        await until(lambda: events.kinds().count("error") >= len(MALFORMED[dialect]), 5, "an error event for each")
        await events.wait("utterance.done")
        assert_speech_like(peer.heard(), peer.rate, min_seconds=3.5, max_seconds=14)
    finally:
        await peer.close()


BROKEN_STARTS = {
    "vonage": json.dumps({"event": "websocket:connected", "content-type": "audio/x-mulaw"}),
    "jambonz": json.dumps({"callSid": "c1", "sampleRate": 8000, "mixType": "stereo"}),
    "asterisk": json.dumps({"event": "MEDIA_START", "connection_id": "c1", "format": "opus"}),
    "freeswitch": json.dumps({"sampleRate": 44100}),
}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_start_that_breaks_the_protocol_is_closed_cleanly(phone: ServerThread, dialect: str) -> None:
    url = phone.url.replace("http", "ws") + f"/v1/telephony/{dialect}/stream"
    subprotocols = ["audio.jambonz.org"] if dialect == "jambonz" else None
    before = len(sessions(phone, dialect))
    async with websockets.connect(url, subprotocols=subprotocols) as socket:
        await socket.send(BROKEN_STARTS[dialect])
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd.code == 1008
    assert len(sessions(phone, dialect)) == before


async def test_asterisk_ulaw_calls_are_heard_too(phone: ServerThread) -> None:
    url = phone.url.replace("http", "ws") + "/v1/telephony/asterisk/stream"
    peer = await call(phone, "asterisk", ChanWebSocketPeer(url, format="ulaw", parameters={"text": REPLY}))
    try:
        events = Events(phone, newest(phone, "asterisk").id)
        await events.wait("utterance.done")
        assert newest(phone, "asterisk").buffer.sample_rate == 8000
        assert_speech_like(peer.heard(), 8000, min_seconds=3.5, max_seconds=14)
    finally:
        await peer.close()


async def test_jambonz_is_answered_with_its_subprotocol(phone: ServerThread) -> None:
    peer = await call(phone, "jambonz")
    try:
        assert peer.socket.subprotocol == "audio.jambonz.org"
    finally:
        await peer.close()


async def test_markup_webhooks_connect_the_call_to_the_stream(phone: ServerThread) -> None:
    base = phone.url.replace("http", "ws") + "/v1/telephony"
    answer = b'{"uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "from": "447700900000"}'
    signed = {"authorization": "Bearer " + vonage_token(VONAGE_SECRET, answer, time.time())}
    vonage_url = "/v1/telephony/vonage/voice?voice=joe&text=Hi%20there"
    async with httpx.AsyncClient(base_url=phone.url) as client:
        assert (await client.post(vonage_url, content=answer)).status_code == 403, "unsigned"
        forged = {"authorization": "Bearer " + vonage_token("not-the-secret", answer, time.time())}
        assert (await client.post(vonage_url, content=answer, headers=forged)).status_code == 403
        assert (await client.post(vonage_url, content=answer + b" ", headers=signed)).status_code == 403, "body changed"
        vonage = await client.post(vonage_url, content=answer, headers=signed)
        jambonz_url, call = "/v1/telephony/jambonz/voice?voice=joe&text=Hi%20there", b'{"call_sid": "c1"}'
        assert (await client.post(jambonz_url, content=call)).status_code == 403, "unsigned"
        stale = {"jambonz-signature": jambonz_signature(JAMBONZ_SECRET, call, int(time.time()) - 3600)}
        assert (await client.post(jambonz_url, content=call, headers=stale)).status_code == 403
        fresh = {"jambonz-signature": jambonz_signature(JAMBONZ_SECRET, call, int(time.time()))}
        jambonz = await client.post(jambonz_url, content=call, headers=fresh)
        for without in ("freeswitch", "asterisk"):
            assert (await client.post(f"/v1/telephony/{without}/voice")).status_code == 404
    assert vonage.headers["content-type"].startswith("application/json")
    assert vonage.json() == [
        {"action": "connect", "endpoint": [{"type": "websocket", "uri": f"{base}/vonage/stream",
                                            "content-type": "audio/l16;rate=16000",
                                            "headers": {"voice": "joe", "text": "Hi there"}}]}
    ]  # fmt: skip
    (listen,) = jambonz.json()
    assert listen["verb"] == "listen" and listen["url"] == f"{base}/jambonz/stream"
    assert listen["sampleRate"] == 8000 and listen["passDtmf"] is True
    assert listen["bidirectionalAudio"] == {"enabled": True, "streaming": True, "sampleRate": 8000}
    assert listen["metadata"] == {"voice": "joe", "text": "Hi there"}
