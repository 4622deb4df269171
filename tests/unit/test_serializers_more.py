"""Vonage, jambonz, FreeSWITCH and Asterisk dialects: messages shaped as their documentation shows decode to typed values, and ours round-trip."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from media.g711 import ulaw_encode
from media.pcm import to_int16, to_s16le
from signaling.serializers.asterisk import AsteriskSerializer, parse_plain
from signaling.serializers.base import Dtmf, Malformed, Mark, Media, Problem, ProtocolViolation, Start, Stop, Undecodable
from signaling.serializers.freeswitch import FreeSwitchSerializer
from signaling.serializers.jambonz import JambonzSerializer
from signaling.serializers.vonage import VonageSerializer, content_type

VONAGE_CONNECTED = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "voice": "alice", "text": "Hi"}
JAMBONZ_METADATA = {
    "callSid": "0b1c6e9c-2d8c-4c5e-9d1c-1c2f5c8b8f00",
    "from": "+15083084809",
    "to": "+15083728299",
    "direction": "inbound",
    "sampleRate": 16000,
    "mixType": "mono",
    "metadata": {"voice": "alice", "text": "Hi"},
}
ASTERISK_START = {
    "event": "MEDIA_START",
    "connection_id": "e226e283-c90a-4ea9-9e37-389000b9ef47",
    "channel": "WebSocket/connectionid",
    "channel_id": "pbx1-123456789.999",
    "format": "slin16",
    "optimal_frame_size": 640,
    "ptime": 20,
    "channel_variables": {"VOICE": "alice", "TEXT": "Hi"},
}


def tone(rate: int, seconds: float = 0.02) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def started(kind: str):
    """A serializer of each binary-L16 dialect past its start (16 kHz), and the start."""
    if kind == "vonage":
        serializer = VonageSerializer()
        return serializer, serializer.decode(json.dumps(VONAGE_CONNECTED))
    if kind == "jambonz":
        serializer = JambonzSerializer()
        return serializer, serializer.decode(json.dumps(JAMBONZ_METADATA))
    if kind == "freeswitch":
        serializer = FreeSwitchSerializer(16000)
        return serializer, serializer.decode(json.dumps({"uuid": "fs-1", "voice": "alice", "text": "Hi"}))
    serializer = AsteriskSerializer()
    return serializer, serializer.decode(json.dumps(ASTERISK_START))


DIALECTS = ("vonage", "jambonz", "freeswitch", "asterisk")


@pytest.mark.parametrize("kind", DIALECTS)
def test_the_start_names_the_call_its_rate_and_opens_the_session_with_its_parameters(kind):
    _, start = started(kind)
    assert isinstance(start, Start) and start.call_id
    assert start.sample_rate == 16000
    assert start.parameters["voice"] == "alice" and start.parameters["text"] == "Hi"


@pytest.mark.parametrize("kind", DIALECTS)
def test_caller_audio_is_binary_pcm_sized_before_decoding(kind):
    serializer, _ = started(kind)
    samples = tone(16000)
    media = serializer.decode(to_s16le(samples))
    assert isinstance(media, Media) and media.sample_rate == 16000
    assert media.seconds == pytest.approx(0.02)
    assert np.max(np.abs(serializer.decode_audio(media) - samples)) < 1e-4  # 16-bit rounding: 1/32768


@pytest.mark.parametrize("kind", ("vonage", "jambonz", "asterisk"))
def test_our_audio_goes_out_as_binary_pcm_at_the_calls_rate(kind):
    serializer, _ = started(kind)
    samples = tone(16000)
    encoded = serializer.encode_audio(samples)
    assert encoded == to_s16le(samples) and len(encoded) == 640  # 20 ms at 16 kHz, as Vonage documents


@pytest.mark.parametrize("kind", DIALECTS)
def test_a_torn_sample_is_undecodable_and_text_garbage_is_malformed(kind):
    serializer, _ = started(kind)
    with pytest.raises(Undecodable):
        serializer.decode(b"\x00\x01\x02")
    if kind != "freeswitch":  # the module sends no text after its metadata: any is a Problem, not malformed
        with pytest.raises(Malformed):
            serializer.decode("{not json")
    else:
        assert isinstance(serializer.decode("{not json"), Problem)


@pytest.mark.parametrize("kind", ("vonage", "jambonz", "asterisk"))
def test_audio_before_the_start_breaks_the_protocol(kind):
    serializer = {"vonage": VonageSerializer, "jambonz": JambonzSerializer, "asterisk": AsteriskSerializer}[kind]()
    with pytest.raises(ProtocolViolation):
        serializer.decode(bytes(640))


def test_vonage_marks_are_notify_actions_echoed_as_notify_events_and_clear_is_an_action():
    serializer, _ = started("vonage")
    assert serializer.echoes_marks
    mark = json.loads(serializer.encode_mark("mark-1-1"))
    assert mark == {"action": "notify", "payload": {"mark": "mark-1-1"}}
    echoed = {"event": "websocket:notify", "payload": mark["payload"]}
    assert serializer.decode(json.dumps(echoed)) == Mark("mark-1-1")
    assert json.loads(serializer.encode_clear()) == {"action": "clear"}
    assert serializer.decode(json.dumps({"event": "websocket:cleared"})) is None


def test_vonage_dtmf_second_connected_unknown_events_and_rates():
    serializer, _ = started("vonage")
    assert serializer.decode(json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260})) == Dtmf("5")
    assert serializer.decode(json.dumps(VONAGE_CONNECTED)) is None
    assert isinstance(serializer.decode(json.dumps({"event": "websocket:surprise"})), Problem)
    assert content_type(8000) == "audio/l16;rate=8000"
    eight = VonageSerializer().decode(json.dumps(VONAGE_CONNECTED | {"content-type": "audio/l16;rate=8000"}))
    assert eight.sample_rate == 8000
    for bad in ("audio/l16;rate=44100", "audio/x-mulaw", ""):
        with pytest.raises(ProtocolViolation):
            VonageSerializer().decode(json.dumps(VONAGE_CONNECTED | {"content-type": bad}))


def test_vonage_headers_nested_under_headers_are_parameters_too():
    start = VonageSerializer().decode(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                                                  "headers": {"voice": "bob", "call_id": "c-1"}}))  # fmt: skip
    assert start.parameters["voice"] == "bob" and start.call_id == "c-1"


def test_jambonz_marks_played_count_marks_cleared_do_not_and_kill_audio_clears():
    serializer, start = started("jambonz")
    assert start.call_id == JAMBONZ_METADATA["callSid"]
    assert json.loads(serializer.encode_mark("m1")) == {"type": "mark", "data": {"name": "m1"}}
    assert serializer.decode(json.dumps({"type": "mark", "data": {"name": "m1", "event": "playout"}})) == Mark("m1")
    assert serializer.decode(json.dumps({"type": "mark", "data": {"name": "m2", "event": "cleared"}})) is None
    assert isinstance(serializer.decode(json.dumps({"type": "mark", "data": "m3"})), Problem)
    assert json.loads(serializer.encode_clear()) == {"type": "killAudio"}
    assert serializer.decode(json.dumps({"event": "dtmf", "dtmf": "#", "duration": "250"})) == Dtmf("#")
    assert isinstance(serializer.decode(json.dumps({"type": "surprise"})), Problem)


def test_jambonz_refuses_stereo_and_a_start_without_a_call():
    with pytest.raises(ProtocolViolation):
        JambonzSerializer().decode(json.dumps(JAMBONZ_METADATA | {"mixType": "stereo"}))
    with pytest.raises(ProtocolViolation):
        JambonzSerializer().decode(json.dumps({k: v for k, v in JAMBONZ_METADATA.items() if k != "callSid"}))
    with pytest.raises(ProtocolViolation):
        JambonzSerializer().decode(json.dumps(JAMBONZ_METADATA | {"sampleRate": 11025}))


def test_freeswitch_audio_goes_out_as_stream_audio_json_and_the_metadata_may_set_the_rate():
    serializer, start = started("freeswitch")
    assert start.call_id == "fs-1" and not serializer.echoes_marks and serializer.encode_clear() is None
    samples = tone(16000)
    message = json.loads(serializer.encode_audio(samples))
    assert message["type"] == "streamAudio"
    assert message["data"]["audioDataType"] == "raw" and message["data"]["sampleRate"] == 16000
    assert base64.b64decode(message["data"]["audioData"]) == to_s16le(samples)
    eight = FreeSwitchSerializer(16000)
    assert eight.decode(json.dumps({"sampleRate": 8000})).sample_rate == 8000
    assert json.loads(eight.encode_audio(tone(8000)))["data"]["sampleRate"] == 8000


def test_freeswitch_starts_on_audio_or_free_text_metadata_when_there_is_no_json():
    on_audio = FreeSwitchSerializer()
    start = on_audio.decode(bytes(320))
    assert isinstance(start, Start) and start.sample_rate == 8000
    assert isinstance(on_audio.decode(bytes(320)), Media)
    on_text = FreeSwitchSerializer()
    assert isinstance(on_text.decode("call from 1234"), Start)
    with pytest.raises(ProtocolViolation):
        FreeSwitchSerializer(44100)


def test_asterisk_json_control_marks_flush_dtmf_and_flow_control():
    serializer, start = started("asterisk")
    assert start.call_id == "pbx1-123456789.999" and start.stream_id == ASTERISK_START["connection_id"]
    assert json.loads(serializer.encode_mark("m1")) == {"command": "MARK_MEDIA", "correlation_id": "m1"}
    processed = {"event": "MEDIA_MARK_PROCESSED", "channel_id": "pbx1-123456789.999", "correlation_id": "m1"}
    assert serializer.decode(json.dumps(processed)) == Mark("m1")
    assert json.loads(serializer.encode_clear()) == {"command": "FLUSH_MEDIA"}
    assert serializer.decode(json.dumps({"event": "DTMF_END", "channel_id": "x", "digit": "7"})) == Dtmf("7")
    assert isinstance(serializer.decode(json.dumps({"event": "MEDIA_XOFF"})), Problem)
    for quiet in ("MEDIA_XON", "STATUS", "QUEUE_DRAINED", "MEDIA_BUFFERING_COMPLETED"):
        assert serializer.decode(json.dumps({"event": quiet})) is None
    assert serializer.decode(json.dumps({"event": "HANGUP"})) == Stop()
    with pytest.raises(Malformed):
        serializer.decode("   ")


def test_asterisk_plain_text_control_and_ulaw_media():
    serializer = AsteriskSerializer()
    start = serializer.decode(
        "MEDIA_START connection_id:e226e283 channel:WebSocket/connectionid channel_id:pbx1-1.9 format:ulaw optimal_frame_size:160 ptime:20"
    )
    assert start.sample_rate == 8000 and start.call_id == "pbx1-1.9"
    assert serializer.encode_mark("m1") == "MARK_MEDIA m1" and serializer.encode_clear() == "FLUSH_MEDIA"
    assert serializer.decode("MEDIA_MARK_PROCESSED m1") == Mark("m1")
    assert parse_plain("DTMF_END digit:5") == {"event": "DTMF_END", "digit": "5"}
    samples = tone(8000)
    media = serializer.decode(ulaw_encode(to_int16(samples)))
    assert media.seconds == pytest.approx(0.02)  # one byte a sample
    assert np.max(np.abs(serializer.decode_audio(media) - samples)) < 0.02  # μ-law's step near 0.5 is 1/64 of it
    assert serializer.encode_audio(samples) == ulaw_encode(to_int16(samples))


def test_asterisk_refuses_a_format_it_cannot_speak():
    with pytest.raises(ProtocolViolation):
        AsteriskSerializer().decode(json.dumps(ASTERISK_START | {"format": "opus"}))
    with pytest.raises(ProtocolViolation):
        AsteriskSerializer().decode(json.dumps({k: v for k, v in ASTERISK_START.items() if "id" not in k}))


def test_vonage_signatures_vouch_for_the_secret_the_time_and_the_body():
    from signaling.vonage_signature import MAX_AGE, VonageSigning, vonage_token

    signing, body, now = VonageSigning("s3cret"), b'{"uuid": "c1"}', 1_800_000_000.0
    token = vonage_token("s3cret", body, now)
    assert signing.verify(f"Bearer {token}", body, now)
    assert not signing.verify(f"Bearer {token}", b'{"uuid": "c2"}', now), "another body"
    assert not signing.verify(f"Bearer {vonage_token('other', body, now)}", body, now), "another secret"
    assert not signing.verify(f"Bearer {token}", body, now + MAX_AGE + 1), "too old"
    header, claims, _ = token.split(".")
    assert not signing.verify(f"Bearer {header}.{claims}.", body, now), "no signature"
    none_alg = base64.urlsafe_b64encode(b'{"alg": "none"}').rstrip(b"=").decode()
    assert not signing.verify(f"Bearer {none_alg}.{claims}.", body, now)
    for garbage in ("", "Bearer", "Basic abc", "Bearer a.b.c", "Bearer !!.??.**"):
        assert not signing.verify(garbage, body, now)
    assert not VonageSigning("").enabled


def test_jambonz_signatures_vouch_for_the_secret_the_time_and_the_body():
    from signaling.jambonz_signature import MAX_AGE, JambonzSigning, jambonz_signature

    signing, body, now = JambonzSigning("whsec"), b'{"call_sid": "c1"}', 1_800_000_000
    header = jambonz_signature("whsec", body, now)
    assert signing.verify(header, body, now)
    assert signing.verify(f"{jambonz_signature('old', body, now)},v1={header.rpartition('v1=')[2]}", body, now), "rotation"
    assert not signing.verify(header, body + b" ", now), "another body"
    assert not signing.verify(jambonz_signature("other", body, now), body, now), "another secret"
    assert not signing.verify(header, body, now + MAX_AGE + 1), "too old"
    for garbage in ("", "t=,v1=", f"t={now}", "v1=abc", f"t=-5,v1={'0' * 64}", f"t={now},t={now},v1=x"):
        assert not signing.verify(garbage, body, now)


def test_asterisk_alaw_media_is_one_byte_a_sample():
    from media.g711 import alaw_encode

    serializer = AsteriskSerializer()
    serializer.decode(json.dumps(ASTERISK_START | {"format": "alaw", "optimal_frame_size": 160}))
    samples = tone(8000)
    assert serializer.encode_audio(samples) == alaw_encode(to_int16(samples))
    media = serializer.decode(alaw_encode(to_int16(samples)))
    assert media.seconds == pytest.approx(0.02) and media.sample_rate == 8000
    assert np.max(np.abs(serializer.decode_audio(media) - samples)) < 0.02  # A-law's step near 0.5 is 1/64 of full scale
