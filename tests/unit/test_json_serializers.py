"""The JSON media-stream dialects (Telnyx, Plivo, Exotel): documented messages decode to typed values, ours round-trip."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signaling.carrier import CarrierCall
from signaling.serializers.base import Dtmf, Malformed, Mark, Media, Problem, ProtocolViolation, Start, Stop, Undecodable
from signaling.serializers.exotel import ExotelSerializer
from signaling.serializers.json_media import Codec
from signaling.serializers.plivo import PlivoSerializer
from signaling.serializers.telnyx import ChunkOrder, TelnyxSerializer
from signaling.plivo_signature import PlivoSigning, plivo_signature, signed_url
from signaling.session import Session, Transport
from signaling.telnyx_signature import TelnyxSigning
from tests.unit.scripted import RATE, Script

STREAM = "32de0dea-53cb-4b21-89a4-9e3819c043bc"
# Telnyx's media streaming messages as its documentation shows them (ids are examples of their shape).
TELNYX_START = {
    "event": "start",
    "sequence_number": "1",
    "start": {
        "user_id": "3e6f995f-85f7-4705-9741-53b116d28237",
        "call_control_id": "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg",
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
    "stream_id": STREAM,
}
PLIVO_START = {
    "event": "start",
    "sequenceNumber": 0,
    "start": {
        "callId": "1f2c7e4a-a16b-11ee-9ee5-0242ac110002",
        "streamId": STREAM,
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": {"voice": "joe"},
}
EXOTEL_START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": "MZ0123456789",
    "start": {
        "stream_sid": "MZ0123456789",
        "call_sid": "CA0123456789",
        "account_sid": "AC0123456789",
        "from": "+919876543210",
        "to": "+918047491899",
        "custom_parameters": {"text": "Namaste"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"},
    },
}


def tone(rate: int, seconds: float = 0.02) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def telnyx_media(payload: str, chunk: int | str = "2", track: str = "inbound") -> str:
    media = {"track": track, "chunk": str(chunk), "timestamp": "5", "payload": payload}
    return json.dumps({"event": "media", "sequence_number": "4", "media": media, "stream_id": STREAM})


def started(serializer, start: dict):
    opened = serializer.decode(json.dumps(start))
    assert isinstance(opened, Start)
    return opened


def test_telnyx_documented_messages_decode_to_typed_values() -> None:
    telnyx = TelnyxSerializer()
    assert telnyx.decode(json.dumps({"event": "connected", "version": "1.0.0"})) is None
    start = started(telnyx, TELNYX_START)
    assert (start.call_id, start.stream_id, start.sample_rate) == (TELNYX_START["start"]["call_control_id"], STREAM, 8000)
    assert telnyx.decode(json.dumps(TELNYX_START)) is None, "a second start means nothing"
    audio = telnyx.decode(telnyx_media(base64.b64encode(bytes(160)).decode()))
    assert isinstance(audio, Media) and audio.seconds == pytest.approx(0.02) and audio.sample_rate == 8000
    assert telnyx.decode(telnyx_media("AAAA", track="outbound")) is None, "our own track is not the caller"
    dtmf = {"event": "dtmf", "stream_id": STREAM, "occurred_at": "2022-03-25T15:14:00Z", "sequence_number": "5", "dtmf": {"digit": "1"}}
    assert telnyx.decode(json.dumps(dtmf)) == Dtmf("1")
    assert telnyx.decode(json.dumps({"event": "mark", "sequence_number": "6", "stream_id": STREAM, "mark": {"name": "m"}})) == Mark("m")
    error = {"event": "error", "payload": {"code": 100002, "title": "Unknown error", "detail": "x"}, "stream_id": STREAM}
    assert isinstance(telnyx.decode(json.dumps(error)), Problem)
    assert telnyx.decode(json.dumps({"event": "stop", "sequence_number": "7", "stop": {}, "stream_id": STREAM})) == Stop()


@pytest.mark.parametrize(("encoding", "rate", "codec", "frame_bytes"), [("PCMU", 8000, Codec.ULAW, 160), ("PCMA", 8000, Codec.ALAW, 160), ("L16", 16000, Codec.L16, 640)])
def test_telnyx_audio_round_trips_in_the_starts_codec(encoding: str, rate: int, codec: Codec, frame_bytes: int) -> None:
    telnyx = TelnyxSerializer()
    start = dict(TELNYX_START, start=dict(TELNYX_START["start"], media_format={"encoding": encoding, "sample_rate": rate}))
    assert started(telnyx, start).sample_rate == rate
    sent = tone(rate)
    outbound = json.loads(telnyx.encode_audio(sent))
    assert outbound == {"event": "media", "media": {"payload": outbound["media"]["payload"]}}
    assert len(base64.b64decode(outbound["media"]["payload"])) == frame_bytes
    heard = telnyx.decode_audio(telnyx.decode(telnyx_media(outbound["media"]["payload"])))
    # G.711 keeps about 38 dB SNR on a loud tone; 16-bit PCM is exact to a quantisation step.
    assert np.abs(heard - sent).max() < (0.02 if codec is not Codec.L16 else 1e-4)
    assert json.loads(telnyx.encode_mark("end-u1-1")) == {"event": "mark", "mark": {"name": "end-u1-1"}}
    assert json.loads(telnyx.encode_clear()) == {"event": "clear"}


def test_telnyx_l16_is_big_endian() -> None:
    telnyx = TelnyxSerializer()
    started(telnyx, dict(TELNYX_START, start=dict(TELNYX_START["start"], media_format={"encoding": "L16", "sample_rate": 8000})))
    payload = base64.b64decode(json.loads(telnyx.encode_audio(np.array([0.5], np.float32)))["media"]["payload"])
    assert payload == (16384).to_bytes(2, "big")


@pytest.mark.parametrize(
    "media_format",
    [{"encoding": "OPUS", "sample_rate": 16000}, {"encoding": "G722", "sample_rate": 16000}, {"encoding": "PCMU", "sample_rate": 16000},
     {"encoding": "L16", "sample_rate": 44100}, "PCMU"],
)  # fmt: skip
def test_a_telnyx_start_we_cannot_carry_breaks_the_protocol(media_format) -> None:
    with pytest.raises(ProtocolViolation):
        TelnyxSerializer().decode(json.dumps(dict(TELNYX_START, start=dict(TELNYX_START["start"], media_format=media_format))))


def test_telnyx_start_without_a_stream_breaks_the_protocol() -> None:
    with pytest.raises(ProtocolViolation):
        TelnyxSerializer().decode(json.dumps({"event": "start", "start": TELNYX_START["start"]}))


def test_telnyx_frames_are_put_back_in_chunk_order() -> None:
    telnyx = TelnyxSerializer()
    started(telnyx, TELNYX_START)

    def frame(value: int) -> str:
        return base64.b64encode(bytes([value]) * 160).decode()

    heard = []
    for chunk in (1, 3, 2, 4, 6, 5, 5, 7):  # two swaps and a duplicate
        decoded = telnyx.decode(telnyx_media(frame(chunk), chunk))
        heard += [m.payload for m in ([decoded] if decoded else []) + telnyx.released()]
    assert heard == [frame(n) for n in range(1, 8)]


def test_telnyx_audio_before_the_start_leaves_no_order_behind() -> None:
    telnyx = TelnyxSerializer()
    telnyx.decode(telnyx_media("AAAA", 7))
    telnyx.decode(telnyx_media("AAAA", 9))  # held, waiting for 8
    started(telnyx, TELNYX_START)
    first = telnyx.decode(telnyx_media("AQID", 1))
    assert first is not None and first.payload == "AQID" and telnyx.released() == []


def test_chunk_order_gives_up_on_a_lost_frame_after_its_window() -> None:
    order = ChunkOrder(window=3)
    frames = {n: Media(str(n), 0.02, 8000) for n in range(1, 8)}
    out = []
    for n in (1, 3, 4, 5, 6, 2, 7):  # 2 is lost until too late
        first = order.put(n, frames[n])
        out += ([first] if first else []) + order.ready()
    assert [m.payload for m in out] == ["1", "3", "4", "5", "6", "7"], "held at most 3 frames, then 2 skipped"
    assert order.dropped == 1, "the late frame is dropped, not played out of place"
    assert order.put(None, frames[1]) is frames[1], "a frame without a chunk number passes straight through"


@pytest.mark.parametrize(
    "message",
    ['{"event": "media"}', '{"event": "dtmf", "dtmf": "1"}', "not json", "[1]", b"\x00binary"],
)
def test_telnyx_malformed_messages_are_malformed(message) -> None:
    telnyx = TelnyxSerializer()
    started(telnyx, TELNYX_START)
    with pytest.raises(Malformed):
        telnyx.decode(message)


def test_plivo_documented_messages_decode_to_typed_values() -> None:
    plivo = PlivoSerializer()
    start = started(plivo, PLIVO_START)
    assert (start.call_id, start.stream_id, start.sample_rate, dict(start.parameters)) == (
        PLIVO_START["start"]["callId"], STREAM, 8000, {"voice": "joe"})  # fmt: skip
    media = {"event": "media", "sequenceNumber": 3, "streamId": STREAM,
             "media": {"track": "inbound", "timestamp": "1700000000000", "chunk": 1, "payload": base64.b64encode(bytes(160)).decode()}}  # fmt: skip
    audio = plivo.decode(json.dumps(media))
    assert isinstance(audio, Media) and audio.seconds == pytest.approx(0.02)
    assert plivo.decode(json.dumps({"event": "dtmf", "streamId": STREAM, "dtmf": {"track": "inbound", "digit": "#"}})) == Dtmf("#")
    assert plivo.decode(json.dumps({"event": "playedStream", "streamId": STREAM, "name": "end-u1-1"})) == Mark("end-u1-1")
    assert plivo.decode(json.dumps({"event": "clearedAudio", "sequenceNumber": 0, "streamId": STREAM})) is None
    assert plivo.decode(json.dumps({"event": "stop", "streamId": STREAM})) == Stop()


def test_plivo_outbound_messages() -> None:
    plivo = PlivoSerializer()
    started(plivo, PLIVO_START)
    play = json.loads(plivo.encode_audio(tone(8000)))
    assert play["event"] == "playAudio" and play["streamId"] == STREAM
    assert (play["media"]["contentType"], play["media"]["sampleRate"]) == ("audio/x-mulaw", 8000)
    assert len(base64.b64decode(play["media"]["payload"])) == 160
    assert json.loads(plivo.encode_mark("m")) == {"event": "checkpoint", "streamId": STREAM, "name": "m"}
    assert json.loads(plivo.encode_clear()) == {"event": "clearAudio", "streamId": STREAM}


def test_plivo_l16_at_16_khz_round_trips() -> None:
    plivo = PlivoSerializer()
    start = dict(PLIVO_START, start=dict(PLIVO_START["start"], mediaFormat={"encoding": "audio/x-l16", "sampleRate": 16000}))
    assert started(plivo, start).sample_rate == 16000
    sent = tone(16000)
    play = json.loads(plivo.encode_audio(sent))
    assert (play["media"]["contentType"], play["media"]["sampleRate"]) == ("audio/x-l16", 16000)
    back = plivo.decode(json.dumps({"event": "media", "media": {"payload": play["media"]["payload"]}}))
    assert np.abs(plivo.decode_audio(back) - sent).max() < 1e-4


@pytest.mark.parametrize("media_format", [{"encoding": "audio/x-opus"}, {"encoding": "audio/x-mulaw", "sampleRate": 16000}, ["audio/x-mulaw"]])
def test_a_plivo_start_we_cannot_carry_breaks_the_protocol(media_format) -> None:
    with pytest.raises(ProtocolViolation):
        PlivoSerializer().decode(json.dumps(dict(PLIVO_START, start=dict(PLIVO_START["start"], mediaFormat=media_format))))


def test_exotel_documented_messages_decode_to_typed_values() -> None:
    exotel = ExotelSerializer()
    assert exotel.decode('{"event": "connected"}') is None
    start = started(exotel, EXOTEL_START)
    assert (start.call_id, start.stream_id, start.sample_rate, dict(start.parameters)) == ("CA0123456789", "MZ0123456789", 16000, {"text": "Namaste"})
    chunk = base64.b64encode(bytes(3200)).decode()  # 100 ms at 16 kHz
    media = {"event": "media", "sequence_number": "3", "stream_sid": "MZ0123456789", "media": {"chunk": "2", "timestamp": "200", "payload": chunk}}
    audio = exotel.decode(json.dumps(media))
    assert audio.seconds == pytest.approx(0.1) and audio.sample_rate == 16000
    dtmf = {"event": "dtmf", "sequence_number": "7", "stream_sid": "MZ0123456789", "dtmf": {"digit": "5", "duration": "100"}}
    assert exotel.decode(json.dumps(dtmf)) == Dtmf("5")
    assert exotel.decode(json.dumps({"event": "mark", "stream_sid": "MZ0123456789", "mark": {"name": "m"}})) == Mark("m")
    assert exotel.decode(json.dumps({"event": "stop", "stream_sid": "MZ0123456789", "stop": {"reason": "callended"}})) == Stop()


def test_exotel_outbound_is_pcm_in_multiples_of_320_bytes() -> None:
    exotel = ExotelSerializer()
    started(exotel, EXOTEL_START)
    sent = tone(16000)
    media = json.loads(exotel.encode_audio(sent))
    payload = base64.b64decode(media["media"]["payload"])
    assert media["stream_sid"] == "MZ0123456789" and len(payload) == 640 and len(payload) % 320 == 0
    assert np.abs(np.frombuffer(payload, "<i2") / 32768.0 - sent).max() < 1e-4, "little-endian 16-bit PCM"
    assert json.loads(exotel.encode_mark("m")) == {"event": "mark", "stream_sid": "MZ0123456789", "mark": {"name": "m"}}
    assert json.loads(exotel.encode_clear()) == {"event": "clear", "stream_sid": "MZ0123456789"}


def test_exotel_bad_payloads_are_skipped_not_fatal() -> None:
    exotel = ExotelSerializer()
    started(exotel, EXOTEL_START)
    with pytest.raises(Undecodable):
        exotel.decode('{"event": "media", "media": {"payload": 12}}')
    with pytest.raises(Undecodable):
        exotel.decode_audio(exotel.decode('{"event": "media", "media": {"payload": "@@@"}}'))


def test_telnyx_signatures() -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    now = 1_700_000_000
    signing = TelnyxSigning(public, clock=lambda: now)

    def request(body: bytes, stamp: int, signed_body: bytes | None = None):
        signature = base64.b64encode(key.sign(str(stamp).encode() + b"|" + (body if signed_body is None else signed_body))).decode()
        return SimpleNamespace(headers={"telnyx-signature-ed25519": signature, "telnyx-timestamp": str(stamp)}, body=body)

    assert signing.verify(request(b'{"data": 1}', now))
    assert signing.verify(request(b'{"data": 1}', now - 299)), "within the tolerance"
    assert not signing.verify(request(b'{"data": 1}', now - 301)), "a replay from long ago"
    assert not signing.verify(request(b'{"data": 2}', now, signed_body=b'{"data": 1}')), "the body changed"
    assert not signing.verify(SimpleNamespace(headers={}, body=b""))
    assert not signing.verify(SimpleNamespace(headers={"telnyx-signature-ed25519": "@@", "telnyx-timestamp": "x"}, body=b""))
    assert not TelnyxSigning("").enabled and not TelnyxSigning("not base64!").verify(request(b"", now))


def test_plivo_v3_signatures() -> None:
    """The signed string as Plivo's SDK (plivo 4.63.0, validate_v3_signature) builds it: checked against it by hand."""
    url = "https://voice.example.com/v1/telephony/plivo/voice?voice=joe&text=Hi%20there"
    form = [("CallUUID", "c-1"), ("From", "+1555"), ("A", "2"), ("A", "1")]
    assert signed_url(url, form) == "https://voice.example.com/v1/telephony/plivo/voice?text=Hi there&voice=joe.A1A2CallUUIDc-1From+1555"
    assert signed_url(url.split("?")[0], [("CallUUID", "c-1")]) == "https://voice.example.com/v1/telephony/plivo/voice?CallUUIDc-1"
    assert signed_url(url.split("?")[0] + "?b=2&a=1") == "https://voice.example.com/v1/telephony/plivo/voice?a=1&b=2"
    signing = PlivoSigning("token")
    signature = plivo_signature("token", url, "n0nce", form)

    def request(headers):
        return SimpleNamespace(headers=headers, url=url, form=form)

    assert signing.verify(request({"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": "n0nce"}))
    assert signing.verify(request({"x-plivo-signature-v3": f"bogus,{signature}", "x-plivo-signature-v3-nonce": "n0nce"}))
    assert not signing.verify(request({"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": "other"}))
    assert not signing.verify(request({"x-plivo-signature-v3": signature}))
    assert not PlivoSigning("other").verify(request({"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": "n0nce"}))


async def test_the_carrier_loop_hears_reordered_telnyx_audio_in_order() -> None:
    """What a serializer holds back for order and releases later is acted on too, oldest first."""

    class MemoryCall(CarrierCall):
        def __init__(self) -> None:
            super().__init__(TelnyxSerializer(), lead=0.0, barge_in=False)
            self.inbox: asyncio.Queue[str | None] = asyncio.Queue()

        async def read(self) -> str | None:
            return await self.inbox.get()

        async def write(self, message) -> None:
            pass

        async def close(self) -> None:
            pass

    call = MemoryCall()
    heard: list[str] = []
    decode = call.serializer.decode_audio
    call.serializer.decode_audio = lambda media: (heard.append(media.payload), decode(media))[1]
    frames = {n: base64.b64encode(bytes([n]) * 160).decode() for n in range(1, 6)}
    for message in [json.dumps(TELNYX_START)] + [telnyx_media(frames[n], n) for n in (1, 3, 2, 5, 4)]:
        call.inbox.put_nowait(message)
    call.inbox.put_nowait(json.dumps({"event": "stop", "stream_id": STREAM}))
    await call.await_start(1.0)
    session = Session(Script(), transport=Transport.TELNYX, output_rate=RATE)
    async with asyncio.timeout(5):
        await call.serve(session)
    assert heard == [frames[n] for n in range(1, 6)] and call.inbound_frames == 5
