"""API keys on the ElevenLabs and Cartesia dialects: each provider's own ways of sending one, and tenants' voices.

Two tenant keys (alice, bob) against a real gateway on loopback. The embedded engine cannot clone,
so a saved voice the route found answers "cannot clone", and one it did not find "voice not found".
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from gateway.settings import Settings
from support.servers import ServerThread
from tests.agent_checks import assert_engine_free

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}
RAW = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
CAROL = "sk-carol-0123456789"  # a key allowed one session at a time


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    tmp: Path = tmp_path_factory.mktemp("agent-keys")
    keys_file = tmp / "keys.toml"
    keys = "".join(f'[[keys]]\nkey = "{key}"\nname = "{name}"\n' for name, key in KEYS.items())
    keys_file.write_text(keys + f'[[keys]]\nkey = "{CAROL}"\nname = "carol"\nmax_sessions = 1\n')
    settings = Settings.model_validate(
        {"paths": {"data_dir": str(tmp / "data")}, "embedded": {"workers": 1}, "auth": {"keys_file": str(keys_file)}}
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alices_voice(keyed: ServerThread) -> str:
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    text = {"text": "This is my voice, keep it to me.", "seed": 3}
    spoken = httpx.post(keyed.url + "/v1/tts", json=text, headers=headers, timeout=30)
    files = {"audio": ("a.wav", base64.b64decode(spoken.json()["audio"]))}
    saved = httpx.post(keyed.url + "/v1/voices", data={"id": "alices-voice", "prompt_text": "This is my voice."},
                       files=files, headers=headers, timeout=30)  # fmt: skip
    assert saved.status_code == 201, saved.text
    return "alices-voice"


def _builtin(server: ServerThread) -> str:
    return server.engine.capabilities.voices[0]


def _elevenlabs(server: ServerThread, voice: str, **headers: str):
    base = server.url.replace("http://", "ws://")
    url = f"{base}/elevenlabs/v1/text-to-speech/{voice}/stream-input?output_format=pcm_16000"
    return websockets.sync.client.connect(url, additional_headers=headers)


def _final_or_error(ws) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message.get("isFinal") or message.get("error"):
            return message


@pytest.mark.parametrize("field", ["xi_api_key", "authorization"])
def test_elevenlabs_socket_key_in_the_first_message(keyed: ServerThread, field: str) -> None:
    key = KEYS["alice"] if field == "xi_api_key" else f"Bearer {KEYS['alice']}"
    with _elevenlabs(keyed, _builtin(keyed)) as ws:
        ws.send(json.dumps({"text": " ", field: key}))
        ws.send(json.dumps({"text": "Hello there."}))
        ws.send(json.dumps({"text": ""}))
        assert _final_or_error(ws) == {"isFinal": True}


NO_GOOD_KEY = [{"text": " "}, {"text": " ", "xi_api_key": "sk-wrong"}, {"text": " ", "xi_api_key": 5}]


@pytest.mark.parametrize("first", NO_GOOD_KEY)
def test_elevenlabs_socket_without_a_good_key_is_refused(keyed: ServerThread, first: dict) -> None:
    with _elevenlabs(keyed, _builtin(keyed)) as ws:
        ws.send(json.dumps(first))
        message = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert message["error"] in ("invalid_api_key", "invalid_request") and closed.value.rcvd.code == 1008
    assert_engine_free(keyed)


def test_elevenlabs_header_key_and_tenants_voices(keyed: ServerThread, alices_voice: str) -> None:
    with _elevenlabs(keyed, alices_voice, **{"xi-api-key": KEYS["bob"]}) as ws:
        ws.send(json.dumps({"text": " "}))
        assert _final_or_error(ws)["error"] == "voice_not_found"  # bob: as if it did not exist
    with _elevenlabs(keyed, alices_voice, **{"xi-api-key": KEYS["alice"]}) as ws:
        ws.send(json.dumps({"text": " "}))
        found = _final_or_error(ws)
    assert found["error"] == "invalid_request" and "clon" in found["message"]  # alice's: found, not cloneable here
    url = f"{keyed.url}/elevenlabs/v1/text-to-speech/{_builtin(keyed)}?output_format=pcm_16000"
    assert httpx.post(url, json={"text": "Hi."}, headers={"xi-api-key": KEYS["bob"]}, timeout=30).status_code == 200
    assert httpx.post(url, json={"text": "Hi."}, timeout=30).status_code == 401
    other = f"{keyed.url}/elevenlabs/v1/text-to-speech/{alices_voice}"
    refused = httpx.post(other, json={"text": "Hi."}, headers={"xi-api-key": KEYS["bob"]}, timeout=30)
    assert refused.status_code == 404 and refused.json()["detail"]["status"] == "voice_not_found"


def _cartesia_request(voice: str) -> str:
    return json.dumps({"context_id": "c", "transcript": "Hello there.", "continue": False,
                       "voice": {"mode": "id", "id": voice}, "output_format": RAW})  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "query"),
    [({"X-API-Key": KEYS["alice"], "Cartesia-Version": "2025-04-16"}, ""), ({}, f"?api_key={KEYS['alice']}"),
     ({"Authorization": f"Bearer {KEYS['alice']}"}, "")],
)  # fmt: skip
def test_cartesia_socket_keys(keyed: ServerThread, headers: dict, query: str) -> None:
    url = keyed.url.replace("http://", "ws://") + "/cartesia/tts/websocket" + query
    with websockets.sync.client.connect(url, additional_headers=headers) as ws:
        ws.send(_cartesia_request(_builtin(keyed)))
        while (message := json.loads(ws.recv(timeout=30)))["type"] not in ("done", "error"):
            pass
    assert message["type"] == "done"


def test_cartesia_refuses_a_missing_key_and_other_tenants_voices(keyed: ServerThread, alices_voice: str) -> None:
    url = keyed.url.replace("http://", "ws://") + "/cartesia/tts/websocket"
    with websockets.sync.client.connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1008
    with websockets.sync.client.connect(url, additional_headers={"X-API-Key": KEYS["bob"]}) as ws:
        ws.send(_cartesia_request(alices_voice))
        assert json.loads(ws.recv(timeout=10))["error_code"] == "voice_not_found"
    body = json.loads(_cartesia_request(alices_voice))
    response = httpx.post(keyed.url + "/cartesia/tts/bytes", json=body, headers={"X-API-Key": KEYS["bob"]}, timeout=30)
    assert response.status_code == 404 and response.json()["error_code"] == "voice_not_found"
    assert httpx.post(keyed.url + "/cartesia/tts/bytes", json=body, timeout=30).status_code == 401


def test_a_draining_server_refuses_new_sockets_in_each_dialect(keyed: ServerThread) -> None:
    keyed.app.state.admission.draining = True  # as on SIGTERM
    try:
        with _elevenlabs(keyed, _builtin(keyed), **{"xi-api-key": KEYS["alice"]}) as ws:
            ws.send(json.dumps({"text": " "}))
            refused = json.loads(ws.recv(timeout=10))
        assert refused["error"] == "too_many_concurrent_requests" and "shutting down" in refused["message"]
        url = keyed.url.replace("http://", "ws://") + f"/cartesia/tts/websocket?api_key={KEYS['alice']}"
        with websockets.sync.client.connect(url) as ws:
            refused = json.loads(ws.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert refused["error_code"] == "shutting_down" and closed.value.rcvd.code == 1013
    finally:
        keyed.app.state.admission.draining = False


def test_a_voice_agent_socket_counts_as_one_of_its_keys_sessions(keyed: ServerThread) -> None:
    """An open ElevenLabs or Cartesia socket holds a session's worth: carol (max_sessions = 1) gets no second one."""
    base = keyed.url.replace("http://", "ws://")
    with _elevenlabs(keyed, _builtin(keyed)) as held:
        held.send(json.dumps({"text": " ", "xi_api_key": CAROL}))
        held.send(json.dumps({"text": "Hello there."}))
        held.send(json.dumps({"text": "", "flush": True}))
        assert "audio" in json.loads(held.recv(timeout=30)), "the first socket speaks"
        with _elevenlabs(keyed, _builtin(keyed)) as second:
            second.send(json.dumps({"text": " ", "xi_api_key": CAROL}))
            refused = json.loads(second.recv(timeout=10))
        assert refused["error"] == "too_many_concurrent_requests" and "carol" in refused["message"]
        with websockets.sync.client.connect(f"{base}/cartesia/tts/websocket?api_key={CAROL}") as second:
            refused = json.loads(second.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=5)
        assert refused["error_code"] == "too_many_requests" and closed.value.rcvd.code == 1013
        with websockets.sync.client.connect(f"{base}/ws/v1/session?api_key={CAROL}") as session, pytest.raises(ConnectionClosed):
            while True:
                session.recv(timeout=5)  # closed without a session.created
    with websockets.sync.client.connect(f"{base}/cartesia/tts/websocket?api_key={CAROL}") as again:
        again.send(_cartesia_request(_builtin(keyed)))
        while (message := json.loads(again.recv(timeout=30)))["type"] not in ("done", "error"):
            pass
    assert message["type"] == "done", "closing the first socket gave its session back"
