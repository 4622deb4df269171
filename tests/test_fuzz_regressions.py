"""The bugs the fuzzers found, each pinned by the smallest input that showed it."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import websockets.sync.client

from media.pcm import from_s16le
from support.servers import ServerThread

FOUR_BYTE_ID = "\U00020000" * 64  # 64 word characters, 256 bytes: past the file name limit


def post_raw_json(url: str, body: dict) -> httpx.Response:
    """JSON with escapes left as sent (httpx's ``json=`` cannot carry an unpaired surrogate)."""
    return httpx.post(url, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=30)


@pytest.mark.parametrize("text", ["Hello\u0000 there, friend.", "Hello \ud800 there, friend."])
def test_nul_and_unpaired_surrogates_in_text_are_dropped_not_fatal(gateway: ServerThread, text: str) -> None:
    """They used to fail the embedded worker after the 200 was sent: a truncated, broken body."""
    streamed = post_raw_json(gateway.url + "/v1/tts/stream", {"text": text})
    assert streamed.status_code == 200 and len(from_s16le(streamed.content)) > 22050 // 2
    mp3 = post_raw_json(gateway.url + "/tts/instruct", {"tts_text": text, "spk_id": "joe"})
    assert mp3.status_code == 200 and mp3.content
    nothing_else = post_raw_json(gateway.url + "/v1/tts", {"text": "\u0000\ud800"})
    assert nothing_else.status_code == 400 and nothing_else.json()["detail"] == "text is empty"


def test_voice_ids_too_long_for_a_file_name_are_refused(gateway: ServerThread, speech_wav: bytes) -> None:
    """Ids of 64 four-byte characters raised ENAMETOOLONG (500) wherever the registry looked them up."""
    assert httpx.get(f"{gateway.url}/v1/voices/{FOUR_BYTE_ID}").status_code == 404
    created = httpx.post(gateway.url + "/v1/voices", json={"id": FOUR_BYTE_ID, "audio_base64": base64.b64encode(speech_wav).decode()})
    assert created.status_code == 400 and "bytes" in created.json()["detail"]
    spoken = httpx.post(gateway.url + "/v1/tts", json={"text": "Hi.", "speaker": FOUR_BYTE_ID})
    assert spoken.status_code == 400 and "unknown voice" in spoken.json()["detail"]


@pytest.mark.parametrize("name", ["a\u0000b", "\ud800.wav", "a" * 300, "a/" * 3000])
def test_unusable_server_side_paths_are_400(gateway: ServerThread, name: str) -> None:
    """NUL bytes, unpaired surrogates and overlong names failed the path lookup with a 500."""
    response = post_raw_json(gateway.url + "/v1/tts", {"text": "", "mode": "vc", "source_wav_path": name})
    assert response.status_code == 400 and response.json()["detail"] == "source_wav_path: not a usable file name"


def test_spk2info_tensors_that_cannot_be_stored_import_nothing(gateway: ServerThread) -> None:
    """Integer tensor names, bfloat16 and sparse tensors failed the import with a 500, after saving earlier entries."""
    torch = pytest.importorskip("torch")

    def upload(entries: dict) -> httpx.Response:
        buffer = io.BytesIO()
        torch.save(entries, buffer)
        return httpx.post(gateway.url + "/v1/voices/import", files={"file": ("spk2info.pt", buffer.getvalue())}, timeout=60)

    named_by_number = upload({"numbered": {0: torch.zeros(4)}})
    assert named_by_number.status_code == 200 and named_by_number.json() == {"imported": ["numbered"]}
    before = set(gateway.app.state.registry.ids())
    for bad in (torch.zeros(4, dtype=torch.bfloat16), torch.zeros(4).to_sparse()):
        refused = upload({"fine-first": {"embedding": torch.zeros(4)}, "bad": {"embedding": bad}})
        assert refused.status_code == 415 and "cannot be stored" in refused.json()["detail"]
    assert set(gateway.app.state.registry.ids()) == before


def test_ws_tts_binary_config_is_refused_with_a_message(gateway: ServerThread) -> None:
    """A binary first frame raised KeyError inside the route (an unhandled server error)."""
    with websockets.sync.client.connect(gateway.url.replace("http", "ws") + "/ws/v1/tts") as socket:
        socket.send(b"\x00\x01")
        assert json.loads(socket.recv(timeout=10)) == {"error": "the first message must be JSON text with the /v1/tts fields", "done": True}
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 1008


@pytest.mark.parametrize("prompt", [[1], {"a": 1}])
def test_session_update_with_non_string_prompt_keeps_the_session(gateway: ServerThread, prompt: object) -> None:
    """A list or an object as prompt_audio_base64 raised AttributeError and closed the session."""
    with websockets.sync.client.connect(gateway.url.replace("http", "ws") + "/ws/v1/session") as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        socket.send(json.dumps({"type": "session.update", "prompt_audio_base64": prompt}))
        error = json.loads(socket.recv(timeout=10))
        assert error["type"] == "error" and "prompt_audio_base64 must be a base64 string" in error["message"]
        socket.send(json.dumps({"type": "ping", "id": 7}))
        pong = json.loads(socket.recv(timeout=10))
        assert (pong["type"], pong["id"]) == ("pong", 7) and pong["session_id"].startswith("s_")


def test_streamed_v1_tts_content_type_is_documented(gateway: ServerThread) -> None:
    """``stream: true`` answers audio/pcm, which the schema did not list."""
    documented = httpx.get(gateway.url + "/openapi.json").json()["paths"]["/v1/tts"]["post"]["responses"]["200"]["content"]
    response = httpx.post(gateway.url + "/v1/tts", json={"text": "Hi there.", "stream": True}, timeout=30)
    assert response.headers["content-type"] in documented


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/tts", {"text": "Hi.", "seed": True}), ("/v1/tts", {"text": "Hi.", "speed": True}),
     ("/v1/tts", {"text": "Hi.", "stream": "yes"}), ("/tts", {"tts_text": "Hi.", "spk_id": "joe", "seed": True}),
     ("/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "joe", "speed": "1.5"})],
)  # fmt: skip
def test_numbers_and_switches_are_not_coerced_from_other_types(gateway: ServerThread, path: str, body: dict) -> None:
    """`"seed": true` was spoken as seed 1 (a 200 where the schema says integer): lax coercion, now refused."""
    refused = httpx.post(gateway.url + path, json=body, timeout=30)
    assert refused.status_code in (400, 422), refused.text[:200]
    assert httpx.post(gateway.url + "/v1/tts", json={"text": "Hi.", "seed": 7, "speed": 1}, timeout=30).status_code == 200
