"""Wire dialects: real messages from the carriers' documentation decode to typed values, and ours round-trip."""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np
import pytest

from media.pcm import from_s16le
from signaling.messages import Error
from signaling.protocol import ProtocolError
from signaling.serializers.audiosocket import AudioSocketSerializer, frame
from signaling.serializers.base import (
    Dtmf,
    Malformed,
    Mark,
    Media,
    Problem,
    ProtocolViolation,
    Start,
    Stop,
    Undecodable,
)
from signaling.serializers.session import AudioFormat, Codec, SessionSerializer
from signaling.serializers.twilio import TwilioSerializer

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
# Twilio's Media Streams messages as its documentation shows them (the ids are examples of their shape).
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC0123456789abcdef0123456789abcdef",
        "streamSid": SID,
        "callSid": "CA0123456789abcdef0123456789abcdef",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
    },
    "streamSid": SID,
}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "my label"}}
DTMF = {"event": "dtmf", "streamSid": SID, "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "1"}}
STOP = {"event": "stop", "sequenceNumber": "5", "stop": {"accountSid": "AC0", "callSid": "CA0"}, "streamSid": SID}


def media(payload: str, track: str = "inbound") -> str:
    fields = {"track": track, "chunk": "2", "timestamp": "5", "payload": payload}
    return json.dumps({"event": "media", "sequenceNumber": "3", "media": fields, "streamSid": SID})


def tone(rate: int, seconds: float = 0.02) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def started_twilio() -> TwilioSerializer:
    serializer = TwilioSerializer()
    serializer.decode(json.dumps(START))
    return serializer


def test_twilio_documented_messages_decode_to_typed_values() -> None:
    serializer = TwilioSerializer()
    assert serializer.decode(json.dumps(CONNECTED)) is None
    start = serializer.decode(json.dumps(START))
    parameters = {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
    assert start == Start("CA0123456789abcdef0123456789abcdef", SID, parameters, 8000)
    assert serializer.decode(json.dumps(START)) is None, "a second start means nothing"
    assert serializer.decode(json.dumps(MARK)) == Mark("my label")
    assert serializer.decode(json.dumps(DTMF)) == Dtmf("1")
    assert serializer.decode(json.dumps(STOP)) == Stop()
    assert serializer.decode(media("AAAA", track="outbound")) is None, "only the caller's track is heard"
    assert serializer.decode('{"event": "mystery"}') == Problem("unknown Twilio event 'mystery' ignored")


def test_twilio_media_is_sized_before_it_is_decoded() -> None:
    serializer = started_twilio()
    ulaw = bytes(range(160))  # 20 ms
    inbound = serializer.decode(media(base64.b64encode(ulaw).decode()))
    assert inbound.payload == base64.b64encode(ulaw).decode() and inbound.sample_rate == 8000
    # Sized from the text: "==" padding counts as up to 2 bytes (samples) more.
    assert 0.02 <= inbound.seconds <= (160 + 2) / 8000
    samples = serializer.decode_audio(inbound)
    assert samples.dtype == np.float32 and len(samples) == 160 and np.all(np.abs(samples) < 1.0)
    with pytest.raises(Undecodable):
        serializer.decode_audio(serializer.decode(media("@@@not-base64")))
    with pytest.raises(Undecodable):
        serializer.decode('{"event": "media", "media": {"payload": 7}}')


@pytest.mark.parametrize(
    "message",
    ["{not json", "[1, 2, 3]", '"media"', '{"event": "media", "media": "x"}', '{"event": "mark"}', b'{"event": "stop"}',
     "[" * 100000],  # fmt: skip
)
def test_twilio_malformed_messages_are_malformed(message) -> None:
    with pytest.raises(Malformed):
        started_twilio().decode(message)


@pytest.mark.parametrize(
    "start",
    [{}, {"streamSid": ""}, {"streamSid": SID, "customParameters": [1]}, {"streamSid": SID, "mediaFormat": "x"},
     {"streamSid": SID, "mediaFormat": {"encoding": "audio/x-l16"}}],  # fmt: skip
)
def test_a_twilio_start_that_cannot_open_a_call_breaks_the_protocol(start: dict) -> None:
    with pytest.raises(ProtocolViolation):
        TwilioSerializer().decode(json.dumps({"event": "start", "start": start}))


def test_twilio_outbound_messages_round_trip() -> None:
    serializer = started_twilio()
    samples = tone(8000)
    encoded = serializer.encode_audio(samples)
    message = json.loads(encoded)
    assert encoded == json.dumps(message), "the hand-joined media message is what json.dumps makes"
    assert message["event"] == "media" and message["streamSid"] == SID
    heard = serializer.decode_audio(serializer.decode(media(message["media"]["payload"])))
    # μ-law's top segment (half to full scale) has steps of 1024 of 32768: half a step of error at most,
    # plus 2 units for the encoder's 32767 scale read back over 32768.
    assert np.max(np.abs(heard - samples)) <= (512 + 2) / 32768
    mark = serializer.encode_mark("utterance-u1-3")
    assert json.loads(mark) == {"event": "mark", "streamSid": SID, "mark": {"name": "utterance-u1-3"}}
    assert serializer.decode(mark) == Mark("utterance-u1-3"), "Twilio echoes our mark as we sent it"
    assert json.loads(serializer.encode_clear()) == {"event": "clear", "streamSid": SID}


CALL = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")


def started_audiosocket() -> AudioSocketSerializer:
    serializer = AudioSocketSerializer()
    serializer.decode(frame(0x01, CALL.bytes))
    return serializer


def test_audiosocket_frames_decode_to_typed_values() -> None:
    serializer = AudioSocketSerializer()
    assert serializer.decode(frame(0x01, CALL.bytes)) == Start(str(CALL), str(CALL))
    slin = bytes(320)  # 20 ms of silence at 8 kHz
    assert serializer.decode(frame(0x10, slin)) == Media(slin, 0.02, 8000)
    assert serializer.decode(frame(0x12, bytes(640))) == Media(bytes(640), 0.02, 16000)
    assert serializer.decode(frame(0x03, b"5")) == Dtmf("5")
    assert serializer.decode(frame(0xFF, b"\x02")) == Problem("asterisk reported error 02")
    assert serializer.decode(frame(0xFF)) == Problem("asterisk reported error without a code")
    assert serializer.decode(frame(0x00)) == Stop()


@pytest.mark.parametrize(
    "first", [frame(0x10, b"ab"), frame(0x01, b"short"), frame(0x00)]
)
def test_audiosocket_calls_begin_with_their_uuid(first: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="the first frame must be a 16-byte UUID"):
        AudioSocketSerializer().decode(first)


@pytest.mark.parametrize("bad", [frame(0x10, b"abc"), frame(0x42, b"garbage"), frame(0x01, CALL.bytes)])
def test_audiosocket_frames_that_break_the_protocol(bad: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        started_audiosocket().decode(bad)


def test_audiosocket_audio_round_trips_at_the_learned_rate() -> None:
    serializer = started_audiosocket()
    serializer.sample_rate = 24000
    samples = tone(24000)
    encoded = serializer.encode_audio(samples)
    assert encoded[:3] == bytes([0x13]) + (960).to_bytes(2, "big")
    inbound = serializer.decode(encoded)
    assert inbound.sample_rate == 24000 and inbound.seconds == pytest.approx(0.02)
    # Half a step of rounding, plus half a step at 0.5 amplitude for the 32767 scale read back over 32768.
    assert np.max(np.abs(serializer.decode_audio(inbound) - samples)) <= 1 / 32768
    assert serializer.encode_hangup() == b"\x00\x00\x00" and serializer.encode_error() == b"\xff\x00\x00"
    assert serializer.encode_mark("m") is None and serializer.encode_clear() is None, "Asterisk has neither"


def test_session_protocol_round_trips() -> None:
    audio = AudioFormat.from_query("pcm", "16000")
    serializer = SessionSerializer(audio, opus_bitrate=32000)
    assert audio.to_dict() == {"format": "pcm", "sample_rate": 16000, "channels": 1, "frame_ms": 20}
    assert not serializer.encodes_off_loop
    samples = tone(16000)
    assert np.max(np.abs(from_s16le(serializer.encode_audio(samples)) - samples)) <= 1 / 32768  # as above
    assert serializer.decode('{"type": "say", "text": "Hi."}') == {"type": "say", "text": "Hi."}
    with pytest.raises(ProtocolError):
        serializer.decode('{"text": "no type"}')
    event = Error(message="é", session_id="s_1", time=1.0)
    expected = {"type": "error", "session_id": "s_1", "time": 1.0, "message": "é"}
    assert json.loads(serializer.encode_event(event)) == expected


def test_session_protocol_opus_is_one_packet_per_frame() -> None:
    serializer = SessionSerializer(AudioFormat.from_query("opus", None), opus_bitrate=32000)
    assert serializer.audio == AudioFormat(Codec.OPUS, 48000) and serializer.encodes_off_loop
    packet = serializer.encode_audio(tone(48000))
    assert 0 < len(packet) < 400  # 20 ms at 32 kb/s is 80 bytes; a packet is never near a PCM frame's 1920
    with pytest.raises(ProtocolError):
        AudioFormat.from_query("pcm", "11025")
