"""The ElevenLabs dialect (``/elevenlabs``), spoken by a raw client with ElevenLabs' documented messages.

Alignments are added up the way pipecat's ElevenLabsTTSService does (each message's times count from
where the previous one ended), and the words found that way are checked against the audio itself.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from cosyvoice.timing import word_spans
from media.g711 import ulaw_decode
from media.pcm import from_s16le
from support.servers import ServerThread
from tests.agent_checks import assert_engine_free, assert_words_match_audio
from tests.audio_checks import assert_speech_like, decode_container

REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."
LONG_REPLY = " ".join([REPLY] * 6)


def _tokens(text: str) -> list[str]:
    """LLM-like pieces: each word with the space after it."""
    pieces = text.split(" ")
    return [piece + " " for piece in pieces[:-1]] + [pieces[-1]]


def _voice(gateway: ServerThread) -> str:
    return gateway.engine.capabilities.voices[0]


def _ws(gateway: ServerThread, voice: str, kind: str, query: str = "output_format=pcm_16000"):
    base = gateway.url.replace("http://", "ws://")
    return websockets.sync.client.connect(f"{base}/elevenlabs/v1/text-to-speech/{voice}/{kind}?{query}")


class Received:
    """A context's audio and its alignment, added up as pipecat does."""

    def __init__(self) -> None:
        self.audio = b""
        self.chars: list[str] = []
        self.times: list[tuple[float, float]] = []
        self.clock_s = 0.0
        self.final = False

    def take(self, message: dict) -> None:
        if message.get("audio"):
            self.audio += base64.b64decode(message["audio"])
        aligned = message.get("alignment")
        if aligned:
            assert aligned == message["normalizedAlignment"]
            starts, durations = aligned["charStartTimesMs"], aligned["charDurationsMs"]
            assert len(aligned["chars"]) == len(starts) == len(durations)
            self.chars += aligned["chars"]
            self.times += [(self.clock_s + s / 1000, self.clock_s + (s + d) / 1000) for s, d in zip(starts, durations)]
            self.clock_s += (starts[-1] + durations[-1]) / 1000
        if message.get("isFinal"):
            self.final = True

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def words(self) -> list[tuple[str, float, float]]:
        return [(self.text[a:b], self.times[a][0], self.times[b - 1][1]) for a, b in word_spans(self.text)]


def _receive_until_final(ws, contexts: dict[str, Received], key: str | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not contexts[key].final:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        assert "error" not in message, message
        contexts[message.get("contextId")].take(message)


def test_stream_input_speaks_streamed_tokens_with_alignments_that_match_the_audio(gateway: ServerThread) -> None:
    received = {None: Received()}
    with _ws(gateway, _voice(gateway), "stream-input") as ws:
        ws.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "speed": 1.0},
                            "generation_config": {"chunk_length_schedule": [120, 160, 250, 290]}}))  # fmt: skip
        for token in _tokens(REPLY):
            ws.send(json.dumps({"text": token, "try_trigger_generation": True}))
        ws.send(json.dumps({"text": "", "flush": True}))
        ws.send(json.dumps({"text": ""}))  # end of input
        _receive_until_final(ws, received)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1000
    got = received[None]
    samples = from_s16le(got.audio)
    assert_speech_like(samples, 16000, min_seconds=3, max_seconds=12)
    assert got.text == REPLY  # every character, in order, once
    assert abs(got.clock_s - len(samples) / 16000) <= 0.002  # the alignments add up to the audio (ms rounding)
    assert [w for w, _, _ in got.words()] == [REPLY[a:b] for a, b in word_spans(REPLY)]
    assert_words_match_audio(samples, 16000, got.words())
    assert_engine_free(gateway)


def test_a_flush_speaks_the_held_text_and_the_input_goes_on(gateway: ServerThread) -> None:
    got = Received()
    with _ws(gateway, _voice(gateway), "stream-input") as ws:
        ws.send(json.dumps({"text": " "}))
        ws.send(json.dumps({"text": "Hello there my friend "}))  # no clause end: held until a flush
        ws.send(json.dumps({"text": "", "flush": True}))
        while len(got.text) < len("Hello there my friend"):
            message = json.loads(ws.recv(timeout=30))
            assert not message.get("isFinal") and "error" not in message, message
            got.take(message)
        ws.send(json.dumps({"text": "Goodbye."}))
        ws.send(json.dumps({"text": ""}))
        _receive_until_final(ws, {None: got})
    assert got.text == "Hello there my friend Goodbye."


def test_multi_stream_contexts_interruption_and_close_socket(gateway: ServerThread) -> None:
    voice = _voice(gateway)
    received = {"reply1": Received(), "reply2": Received()}
    with _ws(gateway, voice, "multi-stream-input", "output_format=pcm_24000&auto_mode=true") as ws:
        ws.send(json.dumps({"text": " ", "context_id": "reply1", "voice_settings": {"speed": 1.0}}))
        tokens = iter(_tokens(LONG_REPLY))
        first_audio = None
        while first_audio is None:  # an LLM streaming its reply, until the listener interrupts
            ws.send(json.dumps({"text": next(tokens), "context_id": "reply1"}))
            try:
                message = json.loads(ws.recv(timeout=0.05))
            except TimeoutError:
                continue
            assert message["contextId"] == "reply1", message
            received["reply1"].take(message)
            first_audio = message.get("audio") or None
        ws.send(json.dumps({"text": ""}))  # a keep-alive
        ws.send(json.dumps({"context_id": "reply1", "close_context": True}))  # interrupted: nothing was flushed
        cut = time.monotonic()
        _receive_until_final(ws, received, "reply1", timeout=5)
        assert time.monotonic() - cut < 2.0
        assert_engine_free(gateway)  # while the socket stays open
        assert len(received["reply1"].text) < len(LONG_REPLY) // 2

        ws.send(json.dumps({"text": " ", "context_id": "reply2"}))
        for token in _tokens(REPLY):
            ws.send(json.dumps({"text": token, "context_id": "reply2"}))
        ws.send(json.dumps({"context_id": "reply2", "flush": True}))
        ws.send(json.dumps({"context_id": "reply2", "close_context": True}))
        _receive_until_final(ws, received, "reply2")
        ws.send(json.dumps({"close_socket": True}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1000
    reply = received["reply2"]
    samples = from_s16le(reply.audio)
    assert reply.text == REPLY
    assert_words_match_audio(samples, 24000, reply.words())
    assert_engine_free(gateway)


@pytest.mark.parametrize("route", ["", "/stream"])
@pytest.mark.parametrize("output_format", ["pcm_22050", "ulaw_8000", "mp3_44100_128"])
def test_http_speech_in_each_output_format(gateway: ServerThread, route: str, output_format: str) -> None:
    url = f"{gateway.url}/elevenlabs/v1/text-to-speech/{_voice(gateway)}{route}?output_format={output_format}"
    response = httpx.post(url, json={"text": REPLY, "model_id": "eleven_flash_v2_5"}, timeout=60)
    assert response.status_code == 200, response.text
    if output_format == "pcm_22050":
        samples, rate = from_s16le(response.content), 22050
    elif output_format == "ulaw_8000":
        samples, rate = ulaw_decode(response.content).astype(np.float32) / 32768, 8000
    else:
        assert response.headers["content-type"] == "audio/mpeg"
        samples, rate = decode_container(response.content, "mp3")
        assert rate == 44100
    assert_speech_like(samples, rate, min_seconds=3, max_seconds=12)


def test_http_with_timestamps_whole_and_streamed(gateway: ServerThread) -> None:
    base = f"{gateway.url}/elevenlabs/v1/text-to-speech/{_voice(gateway)}"
    whole = httpx.post(f"{base}/with-timestamps?output_format=pcm_16000", json={"text": REPLY}, timeout=60).json()
    streamed = httpx.post(f"{base}/stream/with-timestamps?output_format=pcm_16000", json={"text": REPLY}, timeout=60)
    assert streamed.status_code == 200
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    for body in [whole, *lines]:
        assert set(body) == {"audio_base64", "alignment", "normalized_alignment"}
    streamed_audio = b"".join(base64.b64decode(line["audio_base64"]) for line in lines)
    cases = [
        (base64.b64decode(whole["audio_base64"]), [whole["alignment"]]),
        (streamed_audio, [line["alignment"] for line in lines if line["alignment"]]),
    ]
    for audio, alignments in cases:
        chars = [c for a in alignments for c in a["characters"]]
        starts = [t for a in alignments for t in a["character_start_times_seconds"]]
        ends = [t for a in alignments for t in a["character_end_times_seconds"]]
        assert "".join(chars) == REPLY and len(starts) == len(ends) == len(REPLY)
        assert all(s <= e for s, e in zip(starts, ends)) and starts == sorted(starts)
        words = [(REPLY[a:b], starts[a], ends[b - 1]) for a, b in word_spans(REPLY)]
        assert_words_match_audio(from_s16le(audio), 16000, words)
    assert_engine_free(gateway)


# Bad input: an error in ElevenLabs' shape, and nothing left running.


def _error_then_close(ws) -> tuple[dict, int]:
    message = json.loads(ws.recv(timeout=10))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    return message, closed.value.rcvd.code


@pytest.mark.parametrize("kind", ["stream-input", "multi-stream-input"])
def test_a_socket_for_an_unknown_voice_gets_voice_not_found(gateway: ServerThread, kind: str) -> None:
    with _ws(gateway, "no-such-voice", kind) as ws:
        ws.send(json.dumps({"text": " ", "context_id": "c"}))
        message, code = _error_then_close(ws)
    assert message["error"] == "voice_not_found" and "no-such-voice" in message["message"] and code == 1008
    assert_engine_free(gateway)


@pytest.mark.parametrize(
    ("query", "status"),
    [("output_format=wav_44100", "invalid_output_format"), ("output_format=ulaw_16000", "invalid_output_format"),
     ("output_format=pcm_96000", "invalid_output_format"), ("inactivity_timeout=9999", "invalid_request")],
)  # fmt: skip
def test_a_socket_with_a_bad_query_gets_an_error(gateway: ServerThread, query: str, status: str) -> None:
    with _ws(gateway, _voice(gateway), "stream-input", query) as ws:
        message, code = _error_then_close(ws)
    assert message["error"] == status and code == 1008


@pytest.mark.parametrize(
    "sent",
    ["not json", "[1, 2]", json.dumps({"text": 5}),
     json.dumps({"text": " ", "generation_config": {"chunk_length_schedule": "x"}}),
     json.dumps({"text": " ", "voice_settings": {"speed": 9}})],
)  # fmt: skip
def test_a_malformed_message_gets_an_error_and_a_close(gateway: ServerThread, sent: str) -> None:
    with _ws(gateway, _voice(gateway), "stream-input") as ws:
        ws.send(sent)
        message, code = _error_then_close(ws)
    assert message["error"] == "invalid_request" and message["message"] and code == 1008
    assert_engine_free(gateway)


def test_a_context_closed_twice_or_never_opened_is_an_error_for_that_context(gateway: ServerThread) -> None:
    with _ws(gateway, _voice(gateway), "multi-stream-input") as ws:
        ws.send(json.dumps({"text": " ", "context_id": "a"}))
        ws.send(json.dumps({"text": "Hi.", "context_id": "a", "flush": True}))
        ws.send(json.dumps({"context_id": "a", "close_context": True}))
        received = {"a": Received()}
        _receive_until_final(ws, received, "a")
        ws.send(json.dumps({"context_id": "a", "close_context": True}))
        assert json.loads(ws.recv(timeout=5)) == {
            "error": "context_closed", "message": "context 'a' is already closed", "code": 1008, "contextId": "a",
        }  # fmt: skip
        ws.send(json.dumps({"context_id": "a", "text": "More? "}))
        assert json.loads(ws.recv(timeout=5))["error"] == "context_closed"
        ws.send(json.dumps({"context_id": "zz", "close_context": True}))
        assert json.loads(ws.recv(timeout=5))["error"] == "context_not_found"
        for n in range(5):  # ElevenLabs' limit of five open contexts
            ws.send(json.dumps({"text": " ", "context_id": f"open{n}"}))
        ws.send(json.dumps({"text": " ", "context_id": "one-too-many"}))
        message, code = _error_then_close(ws)
    assert message["error"] == "max_active_conversations" and code == 1008
    assert_engine_free(gateway)


def test_a_socket_that_never_sends_text_is_closed_after_its_inactivity_timeout(gateway: ServerThread) -> None:
    with _ws(gateway, _voice(gateway), "multi-stream-input", "inactivity_timeout=1") as ws:
        opened = time.monotonic()
        message, code = _error_then_close(ws)
    assert message["error"] == "input_timeout_exceeded" and code == 1008
    assert 0.9 < time.monotonic() - opened < 3
    assert_engine_free(gateway)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [("/v1/text-to-speech/no-such-voice", {"text": "Hi."}, 404, "voice_not_found"),
     ("/v1/text-to-speech/{voice}?output_format=flac_44100", {"text": "Hi."}, 400, "invalid_output_format"),
     ("/v1/text-to-speech/{voice}/with-timestamps", {"text": ""}, 400, "invalid_request"),
     ("/v1/text-to-speech/{voice}/stream", [1], 400, "invalid_request")],
)  # fmt: skip
def test_http_errors_have_elevenlabs_detail(gateway: ServerThread, path: str, body, status: int, code: str) -> None:
    url = gateway.url + "/elevenlabs" + path.format(voice=_voice(gateway))
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status
    assert response.json()["detail"]["status"] == code and response.json()["detail"]["message"]
    invalid = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert invalid.status_code in (400, 404) and "detail" in invalid.json()
