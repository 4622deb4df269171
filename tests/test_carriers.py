"""Telnyx, Plivo (and Vobiz), Exotel and SignalWire against protocol simulators, over loopback.

Each dialect gets the calls Twilio gets in tests/test_telephony.py: a greeting
heard and speech-like, paced at real time, marks or checkpoints reported once
played, DTMF, a clear on cancel and on the caller's first word, a hang-up
mid-utterance that leaves nothing behind, and bad messages that cost only
themselves. SignalWire is Twilio's dialect: the Twilio simulator plays it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.settings import Settings
from media.resample import resample
from signaling.plivo_signature import plivo_signature
from signaling.serializers.json_media import Codec
from signaling.twilio_signature import twilio_signature
from support.json_stream_peers import ExotelPeer, PlivoPeer, TelnyxPeer
from support.servers import ServerThread
from support.telephony_peers import TwilioPeer
from support.waiting import until
from tests.agent_checks import assert_engine_free
from tests.audio_checks import assert_speech_like, decode_b64_wav, window_levels_db
from tests.test_telephony import REPLY, Events

# REPLY is about 4-5 s of speech from the embedded voice, and Piper's durations vary per take (one read
# 3.98 s), so the checks here take 3.5 s as the floor: a reply missing a clause still falls well below it.

TELNYX_KEY = Ed25519PrivateKey.generate()
SIGNALWIRE_KEY = "PSK_test_signing_key_0123456789"
PLIVO_TOKEN = "plivo-auth-token-0123456789"
DIALECTS = ("telnyx", "plivo", "exotel", "signalwire")
# Lead 100 ms + one 20 ms frame of timer slack + 10 ms of loopback and scheduling: how early a message may come.
EARLY_SLACK = 0.1 + 0.03


@pytest.fixture(scope="module")
def carriers(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    public = TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path_factory.mktemp("carriers"))},
            "telephony": {
                "telnyx_public_key": base64.b64encode(public).decode(),
                "signalwire_signing_key": SIGNALWIRE_KEY,
                "plivo_auth_token": PLIVO_TOKEN,
            },
            "session": {"lead_ms": 100},
        }
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def stream_url(server: ServerThread, carrier: str) -> str:
    return server.url.replace("http", "ws") + f"/v1/telephony/{carrier}/stream"


def peer_for(server: ServerThread, carrier: str, **options):
    url = stream_url(server, carrier)
    if carrier == "telnyx":
        return TelnyxPeer(url, **options)
    if carrier == "plivo":
        return PlivoPeer(url, **options)
    if carrier == "exotel":
        return ExotelPeer(url, **options)
    return TwilioPeer(url, **options)


def sessions(server: ServerThread, carrier: str) -> list:
    return [s for s in server.app.state.sessions.list() if s.transport == carrier]


async def call(server: ServerThread, carrier: str, **options):
    known = {session.id for session in sessions(server, carrier)}
    peer = peer_for(server, carrier, **options)
    await peer.connect()
    await until(lambda: any(s.id not in known for s in sessions(server, carrier)), 5, f"the {carrier} call's session")
    return peer, next(s for s in sessions(server, carrier) if s.id not in known)


def payloads(peer) -> list[bytes]:
    """The audio the gateway sent, as the far end's codec bytes."""
    return [payload for _, payload in peer.received]


def sent_audio(peer) -> np.ndarray:
    if isinstance(peer, TwilioPeer):
        return Codec.ULAW.decode(b"".join(payloads(peer)))
    return peer.sent_audio()


@pytest.fixture(scope="module")
def caller_speech(carriers: ServerThread) -> np.ndarray:
    """A caller saying something, at 8 kHz, starting right on voiced speech."""
    body = httpx.post(carriers.url + "/v1/tts", json={"text": "Hold on, I have a question about that.", "seed": 2}, timeout=30).json()
    samples, rate = decode_b64_wav(body["audio"])
    speech = resample(samples, rate, 8000)
    first = int(np.argmax(window_levels_db(speech, 8000) > window_levels_db(speech, 8000).max() - 25))
    return speech[first * 160 :] * 1.5


@pytest.mark.parametrize("carrier", DIALECTS)
async def test_greeting_is_paced_marked_and_heard(carriers: ServerThread, carrier: str) -> None:
    peer, session = await call(carriers, carrier, parameters={"text": REPLY})
    try:
        events = Events(carriers, session.id)
        done = await events.wait("utterance.done")
        heard_until = max(at for at, audio in peer.played if np.abs(audio).max() > 0.01)
        assert done[0] >= heard_until, "done is reported only after the caller heard the last audio"
        assert any(name.startswith("end-") for _, name in peer.marks_echoed), "marks (checkpoints) went out and came back"
        audio = sent_audio(peer)
        assert_speech_like(audio, 8000, min_seconds=3.5, max_seconds=12)
        sizes = {len(payload) for payload in payloads(peer)}
        assert sizes == ({320} if carrier == "exotel" else {160}), "20 ms per message (Exotel: 16-bit, a multiple of 320 B)"
        first = peer.received[0][0]
        for index, (at, _) in enumerate(peer.received):
            assert index * 0.02 - (at - first) <= EARLY_SLACK, f"message {index} came {index * 0.02 - (at - first):.3f} s early"
        assert peer.received[-1][0] - first > len(audio) / 8000 - 0.25, "paced at real time, not a burst"
        assert done[1]["played_ms"] == done[1]["audio_ms"]
    finally:
        await peer.stop()


@pytest.mark.parametrize("carrier", DIALECTS)
async def test_cancel_clears_the_far_end_and_stops_the_audio(carriers: ServerThread, carrier: str) -> None:
    peer, session = await call(carriers, carrier, parameters={"text": " ".join([REPLY] * 3)})
    try:
        await until(lambda: len(peer.received) >= 50, 20, "a second of audio")
        async with httpx.AsyncClient(base_url=carriers.url) as client:
            response = await client.post(f"/v1/sessions/{session.id}/cancel")
        assert response.json()["cancelled"] == ["u1"]
        cancelled_at = time.monotonic()
        await until(lambda: peer.clears, 2, "the far end told to clear")
        assert peer.clears[0] - cancelled_at < 0.1
        await asyncio.sleep(0.5)  # no event marks the absence of media: watch the line for a while
        late = [at for at, _ in peer.received if at > peer.clears[0] + 0.05]
        assert not late, f"{len(late)} media messages after clear"
    finally:
        await peer.stop()


@pytest.mark.parametrize("carrier", DIALECTS)
async def test_dtmf_reaches_the_event_stream(carriers: ServerThread, carrier: str) -> None:
    peer, session = await call(carriers, carrier)
    try:
        events = Events(carriers, session.id)
        await events.subscribed()
        await peer.dtmf("7")
        _, event = await events.wait("dtmf", timeout=5)
        assert event["digit"] == "7"
    finally:
        await peer.stop()


# Telnyx twice: once with every third frame overtaken by the next, as its docs say frames may arrive.
BARGE_INS = [("telnyx", {}), ("telnyx", {"swap_every": 3}), ("plivo", {}), ("exotel", {}), ("signalwire", {})]


@pytest.mark.parametrize(("carrier", "options"), BARGE_INS, ids=[f"{c}{'-reordered' if o else ''}" for c, o in BARGE_INS])
async def test_caller_speech_clears_within_150_ms(carriers: ServerThread, caller_speech: np.ndarray, carrier: str, options: dict) -> None:
    peer, session = await call(carriers, carrier, parameters={"text": " ".join([REPLY] * 3)}, **options)
    try:
        events = Events(carriers, session.id)
        await until(
            lambda: len(peer.played) >= 60 and any(np.abs(a).max() > 0.05 for _, a in peer.played[-5:]), 20, "speech playing"
        )
        await peer.say(caller_speech)
        _, event = await events.wait("barge_in", timeout=5)
        await until(lambda: peer.clears, 2, "barge-in clears the far end's queue")
        # Exotel's speech_sent_at is when the 100 ms message carrying the first word left, not when it was said.
        reaction = peer.clears[0] - peer.speech_sent_at
        assert reaction < 0.15, f"clear came {reaction * 1000:.0f} ms after the caller started speaking"
        assert event["utterances"] == ["u1"]
    finally:
        await peer.stop()


@pytest.mark.parametrize("carrier", DIALECTS)
async def test_hang_up_mid_utterance_leaves_nothing_behind(carriers: ServerThread, carrier: str) -> None:
    peer, session = await call(carriers, carrier, parameters={"text": " ".join([REPLY] * 3)})
    await until(lambda: len(peer.received) >= 25, 20, "half a second of audio")
    await peer.stop()
    await until(lambda: carriers.app.state.sessions.get(session.id) is None, 5, "the call's session closed")
    assert_engine_free(carriers)


async def test_vobiz_hangs_up_by_closing_the_socket(carriers: ServerThread) -> None:
    peer, session = await call(carriers, "plivo", parameters={"text": REPLY}, vobiz=True)
    await until(lambda: len(peer.received) >= 10, 20, "some audio")
    await peer.stop()  # Vobiz sends no stop event: the socket closes
    await until(lambda: carriers.app.state.sessions.get(session.id) is None, 5, "the call's session closed")


BAD_MESSAGES = {
    "telnyx": ['{"event": "media"}', '{"event": "media", "media": {"track": "inbound", "chunk": "x", "payload": "@@"}}'],
    "plivo": ['{"event": "dtmf", "dtmf": 7}', '{"event": "media", "media": {"payload": "@@not-base64"}}'],
    "exotel": ['{"event": "mark", "mark": "x"}', '{"event": "media", "media": {"payload": 12}}'],
    "signalwire": ['{"event": "mark"}', '{"event": "media", "media": {"payload": "@@not-base64"}}'],
}


@pytest.mark.parametrize("carrier", DIALECTS)
async def test_bad_messages_cost_only_themselves(carriers: ServerThread, carrier: str) -> None:
    peer, session = await call(carriers, carrier, parameters={"text": REPLY})
    try:
        events = Events(carriers, session.id)
        await events.subscribed()
        for bad in ["{not json", '{"event": "mystery"}', "[1, 2, 3]", *BAD_MESSAGES[carrier]]:
            await peer.send_raw(bad)
        await until(lambda: events.kinds().count("error") == 5, 5, "an error event for each bad message")
        await events.wait("utterance.done")
        assert carriers.app.state.sessions.get(session.id) is not None, "the call survives bad messages"
        assert_speech_like(sent_audio(peer), 8000, min_seconds=3.5, max_seconds=14)
    finally:
        await peer.stop()


BAD_STARTS = {
    "telnyx": {"event": "start", "start": {"media_format": {"encoding": "OPUS", "sample_rate": 16000}}, "stream_id": "s"},
    "plivo": {"event": "start", "start": {"callId": "c"}},
    "exotel": {"event": "start", "stream_sid": "s", "start": {"media_format": {"encoding": "audio/x-raw", "sample_rate": "44100"}}},
}


@pytest.mark.parametrize("carrier", BAD_STARTS)
async def test_a_start_we_cannot_serve_closes_cleanly(carriers: ServerThread, carrier: str) -> None:
    before = len(sessions(carriers, carrier))
    async with websockets.connect(stream_url(carriers, carrier)) as socket:
        await socket.send(json.dumps({"event": "connected"}))
        await socket.send(json.dumps(BAD_STARTS[carrier]))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd.code == 1008, "a policy violation, not a crash"
    assert len(sessions(carriers, carrier)) == before


async def test_telnyx_l16_at_16_khz_is_served_wideband(carriers: ServerThread) -> None:
    peer, session = await call(carriers, "telnyx", codec=Codec.L16, rate=16000, parameters={"text": REPLY})
    try:
        assert session.buffer.sample_rate == 16000
        await Events(carriers, session.id).wait("utterance.done")
        assert {len(payload) for payload in payloads(peer)} == {640}, "20 ms of 16-bit audio at 16 kHz"
        assert_speech_like(peer.sent_audio(), 16000, min_seconds=3.5, max_seconds=12)
    finally:
        await peer.stop()


async def test_telnyx_pcma_both_ways(carriers: ServerThread) -> None:
    peer, session = await call(carriers, "telnyx", codec=Codec.ALAW, parameters={"text": REPLY})
    try:
        await Events(carriers, session.id).wait("utterance.done")
        assert_speech_like(peer.sent_audio(), 8000, min_seconds=3.5, max_seconds=12)
    finally:
        await peer.stop()


async def test_stream_url_parameters_open_the_session(carriers: ServerThread) -> None:
    """Where the markup puts the parameters (and Exotel's applet does): the stream URL's query."""
    peer = ExotelPeer(stream_url(carriers, "exotel") + "?voice=nobody-has-this-voice")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await peer.connect()
        await asyncio.wait_for(peer._tasks[0], 5)
    assert closed.value.rcvd.code == 1008, "the unknown voice reached the session and was refused"


@pytest.mark.parametrize("carrier", ("telnyx", "plivo", "exotel"))
async def test_messages_before_the_start_wait_for_it(carriers: ServerThread, carrier: str) -> None:
    """Audio, DTMF and marks before the start are skipped; the start then opens the call; a stop before it ends cleanly."""
    peer = peer_for(carriers, carrier, parameters={"text": REPLY})
    early = [peer.media_message("AAAA", 1), peer.dtmf_message("1"), peer.echo("nothing-1")]
    async with websockets.connect(stream_url(carriers, carrier)) as socket:
        for message in early:
            await socket.send(json.dumps(message))
        await socket.send(json.dumps(peer.start_message()))
        await until(lambda: any(s.transport == carrier for s in carriers.app.state.sessions.list()), 5, "the call")
        assert json.loads(await asyncio.wait_for(socket.recv(), 5))  # our audio flows
    async with websockets.connect(stream_url(carriers, carrier)) as socket:
        await socket.send(json.dumps(peer.stop_message() or {"event": "stop"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd.code == 1000, "a stop before the start: a normal close"


def telnyx_headers(body: bytes, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    signature = TELNYX_KEY.sign(str(stamp).encode() + b"|" + body)
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": str(stamp)}


async def test_texml_webhook_is_signed_and_asks_for_rtp_audio_back(carriers: ServerThread) -> None:
    url = carriers.url + "/v1/telephony/telnyx/voice?voice=joe&text=Hi%20there"
    body = b"CallSid=v3%3Aabc&From=%2B15550001111"
    form = {"content-type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, content=body, headers=form)).status_code == 403
        stale = telnyx_headers(body, int(time.time()) - 600)
        assert (await client.post(url, content=body, headers=form | stale)).status_code == 403, "a replay is refused"
        forged = telnyx_headers(b"CallSid=other")
        assert (await client.post(url, content=body, headers=form | forged)).status_code == 403
        signed = await client.post(url, content=body, headers=form | telnyx_headers(body))
    assert signed.status_code == 200 and signed.headers["content-type"].startswith("application/xml")
    stream = stream_url(carriers, "telnyx")
    assert f'<Connect><Stream url="{stream}?voice=joe&amp;text=Hi+there" bidirectionalMode="rtp"' in signed.text


async def test_plivo_webhook_is_signed_and_streams_bidirectionally(carriers: ServerThread) -> None:
    url = carriers.url + "/v1/telephony/plivo/voice?text=Hello"
    form = {"CallUUID": "c", "From": "+15550001111"}
    signed = {"X-Plivo-Signature-V3": plivo_signature(PLIVO_TOKEN, url, "n0nce", form.items()), "X-Plivo-Signature-V3-Nonce": "n0nce"}
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, data=form)).status_code == 403
        assert (await client.post(url, data=form | {"From": "+1999"}, headers=signed)).status_code == 403
        answer = await client.post(url, data=form, headers=signed)
    assert answer.status_code == 200
    assert f'<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">{stream_url(carriers, "plivo")}?text=Hello</Stream>' in answer.text


async def test_signalwire_laml_is_twilios_signed_with_the_signing_key(carriers: ServerThread) -> None:
    url = carriers.url + "/v1/telephony/signalwire/voice?text=Hi"
    form = {"CallSid": "c", "From": "+15550001111"}
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, data=form)).status_code == 403
        signature = twilio_signature(SIGNALWIRE_KEY, url, form.items())
        signed = await client.post(url, data=form, headers={"X-SignalWire-Signature": signature})
    assert signed.status_code == 200
    assert f'<Connect><Stream url="{stream_url(carriers, "signalwire")}"><Parameter name="text" value="Hi"/>' in signed.text


async def test_unknown_carriers_and_markup_they_lack_are_not_found(carriers: ServerThread) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.post(carriers.url + "/v1/telephony/nonesuch/voice")).status_code == 404
        assert (await client.post(carriers.url + "/v1/telephony/exotel/voice")).status_code == 404, "Exotel has no markup"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(stream_url(carriers, "nonesuch"))
    assert refused.value.response.status_code == 404


async def test_with_api_keys_on_the_webhook_hands_its_key_to_the_stream(tmp_path) -> None:
    """Telnyx signs its webhook, not its socket: the webhook's ``api_key`` rides in the stream URL and owns the call."""
    from html import unescape

    from tests.test_tenancy import KEYS, KEYS_FILE

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS_FILE)
    public = TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "auth": {"keys_file": str(keys_file)},
            "telephony": {"telnyx_public_key": base64.b64encode(public).decode()},
        }
    )
    server = ServerThread(settings).start()
    try:
        async with websockets.connect(stream_url(server, "telnyx")) as keyless:
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await asyncio.wait_for(keyless.recv(), 5)
        assert refused.value.rcvd.code == 1008, "a stream without a key is refused"
        url = server.url + f"/v1/telephony/telnyx/voice?api_key={KEYS['alice']}&text=Hi"
        body = b"CallSid=v3%3Aabc"
        headers = {"content-type": "application/x-www-form-urlencoded"} | telnyx_headers(body)
        async with httpx.AsyncClient() as client:
            texml = (await client.post(url, content=body, headers=headers)).text
        stream = unescape(texml.split('url="', 1)[1].split('"', 1)[0])
        assert stream == stream_url(server, "telnyx") + f"?api_key={KEYS['alice']}&text=Hi"
        peer = TelnyxPeer(stream)
        await peer.connect()
        try:
            await until(lambda: sessions(server, "telnyx"), 5, "the call's session")
            assert sessions(server, "telnyx")[0].owner == "alice"
        finally:
            await peer.stop()
    finally:
        server.stop()
