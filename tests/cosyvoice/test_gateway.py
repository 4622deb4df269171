"""The whole gateway on the tiny v2 model: REST, the OpenAI route and a WebSocket session, unchanged."""

from __future__ import annotations

import httpx
import pytest

from gateway.settings import Settings
from support.servers import ServerThread

RATE = 24000
TEXT = "Hello there, this is a test of the tiny model."


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    settings = Settings.model_validate(
        {"engine": {"model_dir": str(model_dirs[2]), "device": "cpu"},
         "paths": {"data_dir": str(tmp_path_factory.mktemp("data"))}}
    )
    server = ServerThread(settings).start(ready_timeout=120)
    yield server
    server.stop()


def test_health_and_speakers(server):
    health = httpx.get(server.url + "/v1/health").json()
    assert health["engine"] == "cosyvoice" and health["status"] == "ok"
    assert httpx.get(server.url + "/v1/speakers").json()["speakers"]


def test_rest_stream_and_errors(server):
    response = httpx.post(server.url + "/v1/tts/stream", json={"text": TEXT, "seed": 1}, timeout=120)
    assert response.status_code == 200 and response.headers["x-sample-rate"] == str(RATE)
    assert len(response.content) > RATE * 2 * 0.5  # s16le, at least half a second
    bad = httpx.post(server.url + "/v1/tts", json={"text": TEXT, "mode": "instruct", "instruct_text": "x"}, timeout=30)
    assert bad.status_code == 400 and "instruct" in bad.text


def test_openai_speech(server):
    response = httpx.post(
        server.url + "/v1/audio/speech",
        json={"model": "tts-1", "input": TEXT, "voice": "中文女", "response_format": "pcm"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert len(response.content) > RATE * 2 * 0.5


def test_websocket_session(server):
    import json

    import websockets.sync.client

    url = server.url.replace("http", "ws") + "/ws/v1/session?format=pcm&sample_rate=24000"
    with websockets.sync.client.connect(url) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        socket.send(json.dumps({"type": "text", "text": TEXT, "flush": True}))
        audio_bytes, done = 0, None
        while done is None:
            message = socket.recv(timeout=120)
            if isinstance(message, bytes):
                audio_bytes += len(message)
            elif json.loads(message)["type"] == "utterance.done":
                done = json.loads(message)
    assert done["state"] == "done" and done["audio_ms"] > 500
    assert audio_bytes / 2 / RATE == pytest.approx(done["audio_ms"] / 1000, abs=0.1)
