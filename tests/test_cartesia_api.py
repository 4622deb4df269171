"""The Cartesia dialect (``/cartesia``), spoken by a raw client with Cartesia's documented messages."""

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
from gateway.routes import cartesia
from media.g711 import ulaw_decode
from media.pcm import from_s16le
from support.servers import ServerThread
from tests.agent_checks import assert_engine_free, assert_words_match_audio
from tests.audio_checks import assert_speech_like, decode_container, decode_wav

REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."
LONG_REPLY = " ".join([REPLY] * 6)
RAW_24K = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}


def _tokens(text: str) -> list[str]:
    pieces = text.split(" ")
    return [piece + " " for piece in pieces[:-1]] + [pieces[-1]]


def _voice(gateway: ServerThread) -> dict:
    return {"mode": "id", "id": gateway.engine.capabilities.voices[0]}


def _ws(gateway: ServerThread):
    return websockets.sync.client.connect(
        gateway.url.replace("http://", "ws://") + "/cartesia/tts/websocket",
        additional_headers={"Cartesia-Version": "2025-04-16"},
    )


def _request(gateway: ServerThread, context_id: str, text: str, **fields) -> str:
    return json.dumps({
        "model_id": "sonic-2", "transcript": text, "voice": _voice(gateway), "language": "en",
        "context_id": context_id, "output_format": RAW_24K, "add_timestamps": True, "continue": True, **fields,
    })  # fmt: skip


class Received:
    def __init__(self) -> None:
        self.audio = b""
        self.words: list[tuple[str, float, float]] = []
        self.flushes: list[int] = []
        self.done = False

    def take(self, message: dict) -> None:
        kind = message["type"]
        assert kind in ("chunk", "timestamps", "flush_done", "done"), message
        if kind == "chunk":
            self.audio += base64.b64decode(message["data"])
        elif kind == "timestamps":
            stamps = message["word_timestamps"]
            self.words += list(zip(stamps["words"], stamps["start"], stamps["end"], strict=True))
        elif kind == "flush_done":
            self.flushes.append(message["flush_id"])
        else:
            self.done = True


def _receive_until_done(ws, contexts: dict[str, Received], key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not contexts[key].done:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        contexts[message["context_id"]].take(message)


def test_streamed_transcripts_on_a_context_with_word_timestamps_that_match_the_audio(gateway: ServerThread) -> None:
    received = {"turn1": Received()}
    with _ws(gateway) as ws:
        for token in _tokens(REPLY):
            ws.send(_request(gateway, "turn1", token))
        ws.send(_request(gateway, "turn1", "", flush=True))
        ws.send(_request(gateway, "turn1", "", **{"continue": False}))
        _receive_until_done(ws, received, "turn1")
    got = received["turn1"]
    samples = from_s16le(got.audio)
    assert_speech_like(samples, 24000, min_seconds=3, max_seconds=12)
    assert [w for w, _, _ in got.words] == [REPLY[a:b] for a, b in word_spans(REPLY)]
    assert got.flushes == [1]
    assert_words_match_audio(samples, 24000, got.words)
    assert_engine_free(gateway)


def test_cancel_mid_reply_stops_the_engine_and_the_socket_goes_on(gateway: ServerThread) -> None:
    received = {"turn1": Received(), "turn2": Received()}
    with _ws(gateway) as ws:
        tokens = iter(_tokens(LONG_REPLY))
        while not received["turn1"].audio:  # an LLM streaming its reply, until the listener interrupts
            ws.send(_request(gateway, "turn1", next(tokens)))
            try:
                received["turn1"].take(json.loads(ws.recv(timeout=0.05)))
            except TimeoutError:
                pass
        ws.send(json.dumps({"context_id": "turn1", "cancel": True}))
        assert_engine_free(gateway, timeout=1.0)
        # Nothing more for the cancelled context; the next turn is served on the same socket.
        ws.send(_request(gateway, "turn2", REPLY, **{"continue": False}))
        deadline = time.monotonic() + 60
        while not received["turn2"].done and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=30))
            # turn1's messages may still be in flight from before the cut, but never its end
            assert message["context_id"] == "turn2" or message["type"] != "done", message
            received[message["context_id"]].take(message)
        assert not received["turn1"].done
        ws.send(_request(gateway, "turn1", "More text. "))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["context_id"] == "turn1"
        assert message["error_code"] == "context_closed"
    assert_words_match_audio(from_s16le(received["turn2"].audio), 24000, received["turn2"].words)
    assert_engine_free(gateway)


@pytest.mark.parametrize(
    ("output_format", "decode"),
    [({"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}, lambda data: (from_s16le(data), 16000)),
     ({"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100},
      lambda data: (np.frombuffer(data, "<f4"), 44100)),
     ({"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
      lambda data: (ulaw_decode(data).astype(np.float32) / 32768, 8000)),
     ({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 22050}, decode_wav),
     ({"container": "mp3", "sample_rate": 44100, "bit_rate": 128000}, lambda data: decode_container(data, "mp3"))],
)  # fmt: skip
def test_bytes_in_each_output_format(gateway: ServerThread, output_format: dict, decode) -> None:
    body = {"model_id": "sonic-2", "transcript": REPLY, "voice": _voice(gateway), "output_format": output_format}
    headers = {"Cartesia-Version": "2025-04-16"}
    response = httpx.post(gateway.url + "/cartesia/tts/bytes", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    samples, rate = decode(response.content)
    assert rate == output_format["sample_rate"]
    assert_speech_like(samples, rate, min_seconds=3, max_seconds=12)


def test_sse_events_with_timestamps(gateway: ServerThread) -> None:
    body = {"model_id": "sonic-2", "transcript": REPLY, "voice": _voice(gateway), "output_format": RAW_24K,
            "add_timestamps": True}  # fmt: skip
    response = httpx.post(gateway.url + "/cartesia/tts/sse", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    got = Received()
    for event in events:
        got.take(event)
    assert events[-1] == {"type": "done", "done": True, "status_code": 200, "context_id": None}
    assert [w for w, _, _ in got.words] == [REPLY[a:b] for a, b in word_spans(REPLY)]
    assert_words_match_audio(from_s16le(got.audio), 24000, got.words)
    assert_engine_free(gateway)


# Bad input: an error in Cartesia's shape, and nothing left running.


@pytest.mark.parametrize(
    ("fields", "code"),
    [({"voice": {"mode": "id", "id": "no-such-voice"}}, "voice_not_found"),
     ({"voice": {"mode": "embedding", "embedding": [0.1]}}, "invalid_voice"),
     ({"output_format": {"container": "ogg", "encoding": "opus", "sample_rate": 24000}}, "invalid_output_format"),
     ({"output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 1000}}, "invalid_output_format"),
     ({"output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": "fast"}}, "invalid_output_format"),
     ({"continue": "yes"}, "invalid_request"), ({"transcript": 7}, "invalid_request"),
     ({"generation_config": {"speed": 100}}, "invalid_request")],
)  # fmt: skip
def test_a_bad_request_on_the_socket_is_an_error_for_its_context(gateway: ServerThread, fields: dict, code: str):
    with _ws(gateway) as ws:
        ws.send(_request(gateway, "c1", "Hello. ", **fields))
        message = json.loads(ws.recv(timeout=10))
        assert message["type"] == "error" and message["done"] is True and message["context_id"] == "c1"
        assert message["error_code"] == code and message["error"] and message["status_code"] in (400, 404)
        ws.send("not json")  # a malformed message: an error, and the socket goes on
        message = json.loads(ws.recv(timeout=10))
        assert message["type"] == "error" and message["context_id"] is None and message["status_code"] == 400
        ws.send(_request(gateway, "c2", "Fine. ", **{"continue": False}))
        received = {"c2": Received()}
        _receive_until_done(ws, received, "c2")
    assert_engine_free(gateway)


def test_a_context_ended_twice_is_an_error(gateway: ServerThread) -> None:
    with _ws(gateway) as ws:
        ws.send(_request(gateway, "c1", "Hi. ", **{"continue": False}))
        ws.send(_request(gateway, "c1", "", **{"continue": False}))
        messages = []
        while not any(m["type"] == "error" for m in messages):
            messages.append(json.loads(ws.recv(timeout=10)))
        error = messages[-1]
        assert error["context_id"] == "c1" and error["error_code"] == "context_closed"
    assert_engine_free(gateway)


def test_a_socket_that_never_sends_text_is_closed(gateway: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cartesia, "IDLE_TIMEOUT_S", 0.5)  # the server runs in this process: 5 minutes is long
    with _ws(gateway) as ws:
        message = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert message["type"] == "error" and message["error_code"] == "idle_timeout"
    assert closed.value.rcvd.code == 1008
    assert_engine_free(gateway)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [({"voice": {"mode": "id", "id": "no-such-voice"}}, 404, "voice_not_found"),
     ({"output_format": {"container": "raw", "encoding": "pcm_s8", "sample_rate": 8000}}, 400, "invalid_output_format"),
     ({"transcript": "  "}, 400, "invalid_request")],
)  # fmt: skip
@pytest.mark.parametrize("route", ["bytes", "sse"])
def test_http_errors_have_cartesia_shape(gateway: ServerThread, route: str, body: dict, status: int, code: str) -> None:
    full = {"model_id": "sonic-2", "transcript": "Hi.", "voice": _voice(gateway), "output_format": RAW_24K, **body}
    response = httpx.post(f"{gateway.url}/cartesia/tts/{route}", json=full, timeout=30)
    assert response.status_code == status
    assert response.json()["error_code"] == code and response.json()["message"] and response.json()["error"]
    json_type = {"content-type": "application/json"}
    invalid = httpx.post(f"{gateway.url}/cartesia/tts/{route}", content=b"[", headers=json_type)
    assert invalid.status_code == 400 and invalid.json()["error_code"] == "invalid_request"
