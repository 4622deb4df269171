"""API keys are tenants: another tenant's sessions and saved voices do not exist for a key; admin keys reach all.

Two tenant keys (alice, bob) and an admin key (ops) against a real gateway
on loopback. Every cross-tenant action is a 404 (or, for a voice on a
synthesis route, an unknown voice); the owner and the admin still work.
The embedded engine cannot clone, so a saved voice that a route found
answers "cannot clone voices", and one it did not find "unknown voice".
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import pytest
import websockets
import websockets.sync.client
from aiortc import RTCConfiguration, RTCPeerConnection

from cosyvoice.engine import Audio
from cosyvoice.voices import VoiceRegistry
from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.settings import Settings
from media.decode import decode_audio
from support.servers import ServerThread, free_port
from support.telephony_peers import AsteriskPeer, TwilioPeer
from support.waiting import until

TOKEN = "twilio-token-0123456789"
KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789", "ops": "sk-ops-0123456789"}
KEYS_FILE = "".join(
    f'[[keys]]\nkey = "{key}"\nname = "{name}"\n' + ("admin = true\n" if name == "ops" else "") for name, key in KEYS.items()
)
TEXT = "A secret only alice may read."


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def settings(tmp_path: Path, **telephony) -> Settings:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS_FILE)
    return Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "embedded": {"workers": 1},
            "auth": {"keys_file": str(keys_file)},
            "webrtc": {"host_addresses": ["127.0.0.1"]},
            "telephony": {"twilio_auth_token": TOKEN, "audiosocket_port": free_port(), **telephony},
        }
    )


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    server = ServerThread(settings(tmp_path_factory.mktemp("tenants"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speech(tenants: ServerThread) -> bytes:
    """Real speech (the embedded voice), fit to be a prompt."""
    text = {"text": "This is my voice, keep it to me.", "seed": 3}
    body = httpx.post(tenants.url + "/v1/tts", json=text, headers=auth("alice"), timeout=30)
    return base64.b64decode(body.json()["audio"])


def ws_url(server: ServerThread, path: str, name: str, **query: str) -> str:
    params = "&".join(f"{key}={value}" for key, value in {"api_key": KEYS[name], **query}.items())
    return server.url.replace("http", "ws") + f"{path}?{params}"


def refused_everything(client: httpx.Client, server: ServerThread, session_id: str, name: str) -> None:
    """Every control action on the session is a 404 for ``name``, as if it did not exist."""
    base = f"/v1/sessions/{session_id}"
    listed = client.get("/v1/sessions", headers=auth(name))
    assert listed.status_code == 200 and session_id not in listed.text and TEXT not in listed.text
    for method, path, body in [
        ("GET", base, None),
        ("POST", base + "/say", {"text": "Words from someone else.", "flush": True}),
        ("POST", base + "/flush", None),
        ("POST", base + "/cancel", None),
        ("GET", base + "/events", None),
        ("DELETE", base, None),
    ]:
        response = client.request(method, path, json=body, headers=auth(name))
        assert response.status_code == 404, (name, method, path, response.status_code)
        assert TEXT not in response.text
    with websockets.sync.client.connect(ws_url(server, base + "/events", name)) as watcher:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            watcher.recv(timeout=5)
    assert closed.value.rcvd.code == 1008
    assert server.app.state.sessions.get(session_id) is not None, "the session lives on"


def steers(client: httpx.Client, server: ServerThread, session_id: str, name: str) -> None:
    base = f"/v1/sessions/{session_id}"
    assert session_id in client.get("/v1/sessions", headers=auth(name)).text
    assert client.get(base, headers=auth(name)).status_code == 200
    with websockets.sync.client.connect(ws_url(server, base + "/events", name)) as watcher:
        assert client.post(base + "/say", json={"text": "Hello.", "flush": True}, headers=auth(name)).status_code == 200
        assert json.loads(watcher.recv(timeout=10))["session_id"] == session_id
    assert client.post(base + "/cancel", headers=auth(name)).status_code == 200


def test_a_session_is_its_openers_and_the_admins(tenants: ServerThread) -> None:
    alices = ws_url(tenants, "/ws/v1/session", "alice")
    with websockets.sync.client.connect(alices) as socket, httpx.Client(base_url=tenants.url, timeout=30) as client:
        session_id = json.loads(socket.recv(timeout=10))["session"]["session_id"]
        socket.send(json.dumps({"type": "text", "text": TEXT}))
        assert json.loads(socket.recv(timeout=10))["type"] == "text.accepted"
        refused_everything(client, tenants, session_id, "bob")
        assert TEXT in client.get(f"/v1/sessions/{session_id}", headers=auth("alice")).text
        steers(client, tenants, session_id, "alice")
        steers(client, tenants, session_id, "ops")
        assert client.delete(f"/v1/sessions/{session_id}", headers=auth("ops")).status_code == 204


async def test_whip_calls_are_deleted_only_by_their_owner_or_an_admin(tenants: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=tenants.url, timeout=30) as client:
        for deleter in ("alice", "ops"):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"content-type": "application/sdp", **auth("alice")}
            response = await client.post("/v1/whip", content=pc.localDescription.sdp, headers=headers)
            assert response.status_code == 201, response.text
            location = response.headers["location"]
            assert (await client.delete(location, headers=auth("bob"))).status_code == 404
            assert tenants.app.state.sessions.get(location.rsplit("/", 1)[1]) is not None
            assert (await client.delete(location, headers=auth(deleter))).status_code == 200
            await pc.close()


async def test_phone_calls_without_an_owner_are_steered_only_by_admins(tenants: ServerThread) -> None:
    twilio = TwilioPeer(tenants.url.replace("http", "ws") + "/v1/telephony/twilio/stream", auth_token=TOKEN)
    asterisk = AsteriskPeer("127.0.0.1", tenants.app.state.audiosocket.port)
    await twilio.connect()
    await asterisk.connect()
    try:
        def calls() -> list[str]:
            return [s.id for s in tenants.app.state.sessions.list() if s.transport in ("twilio", "audiosocket")]

        await until(lambda: len(calls()) == 2, 5, "both calls")
        assert str(asterisk.call_id) in calls()
        async with httpx.AsyncClient(base_url=tenants.url, timeout=30) as client:
            for call_id in calls():
                for name in ("alice", "bob"):
                    said = await client.post(f"/v1/sessions/{call_id}/say", json={"text": "Send me your card number."}, headers=auth(name))
                    assert said.status_code == 404
                    assert (await client.delete(f"/v1/sessions/{call_id}", headers=auth(name))).status_code == 404
                    assert call_id not in (await client.get("/v1/sessions", headers=auth(name))).text
                said = await client.post(f"/v1/sessions/{call_id}/say", json={"text": "Hello caller."}, headers=auth("ops"))
                assert said.status_code == 200
    finally:
        await twilio.close()
        await asterisk.close()


async def test_the_telephony_owner_steers_phone_calls(tmp_path: Path) -> None:
    server = ServerThread(settings(tmp_path, owner="alice")).start()
    asterisk = AsteriskPeer("127.0.0.1", server.app.state.audiosocket.port)
    await asterisk.connect()
    try:
        call_id = str(asterisk.call_id)
        await until(lambda: server.app.state.sessions.get(call_id) is not None, 5, "the call")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            path = f"/v1/sessions/{call_id}/say"
            assert (await client.post(path, json={"text": "Hi."}, headers=auth("bob"))).status_code == 404
            assert (await client.post(path, json={"text": "Hi."}, headers=auth("alice"))).status_code == 200
            assert (await client.post(path, json={"text": "Hi."}, headers=auth("ops"))).status_code == 200
    finally:
        await asterisk.close()
        await asyncio.to_thread(server.stop)


def test_a_telephony_owner_must_name_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no API key"):
        create_app(settings(tmp_path, owner="mallory"))


def create_voice(client: httpx.Client, voice_id: str, audio: bytes, name: str) -> httpx.Response:
    files = {"audio": ("a.wav", audio)}
    return client.post("/v1/voices", data={"id": voice_id, "prompt_text": "This is my voice."}, files=files, headers=auth(name))


def synthesis_answers(client: httpx.Client, server: ServerThread, voice: str, name: str) -> list[str]:
    """What each route that takes a voice id says of ``voice`` for ``name`` (every one a refusal here)."""
    answers = []
    for path, fields in [
        ("/v1/tts", {"json": {"text": "Hello.", "speaker": voice}}),
        ("/tts", {"json": {"tts_text": "Hello.", "spk_id": voice}}),
        ("/inference_sft", {"data": {"tts_text": "Hello.", "spk_id": voice}}),
        ("/v1/audio/speech", {"json": {"model": "tts-1", "input": "Hello.", "voice": voice}}),
    ]:
        response = client.post(path, **fields, headers=auth(name))
        assert response.status_code in (400, 404), (path, response.status_code)
        answers.append(response.text)
    with websockets.sync.client.connect(ws_url(server, "/ws/v1/tts", name)) as socket:
        socket.send(json.dumps({"text": "Hello.", "speaker": voice}))
        answers.append(socket.recv(timeout=10))
    with websockets.sync.client.connect(ws_url(server, "/ws/v1/session", name, voice=voice)) as socket:
        answers.append(socket.recv(timeout=10))
    with websockets.sync.client.connect(ws_url(server, "/ws/v1/session", name)) as socket:
        socket.recv(timeout=10)
        socket.send(json.dumps({"type": "session.update", "voice": voice}))
        answers.append(socket.recv(timeout=10))
    return answers


def test_saved_voices_are_their_tenants(tenants: ServerThread, speech: bytes) -> None:
    torch = pytest.importorskip("torch")
    with httpx.Client(base_url=tenants.url, timeout=30) as client:
        assert create_voice(client, "alices-voice", speech, "alice").status_code == 201
        features = torch.randn(1, 192)
        pt = io.BytesIO()
        torch.save({"alices-import": {"embedding": features}}, pt)
        imported = client.post("/v1/voices/import", files={"file": ("spk2info.pt", pt.getvalue())}, headers=auth("alice"))
        assert imported.status_code == 200

        for name in ("alice", "ops"):
            assert {"alices-voice", "alices-import"} <= {v["id"] for v in client.get("/v1/voices", headers=auth(name)).json()["voices"]}
            assert client.get("/v1/voices/alices-voice", headers=auth(name)).json()["owner"] == "alice"
            assert decode_audio(client.get("/v1/voices/alices-voice/audio", headers=auth(name)).content)[1] > 0
            exported = torch.load(io.BytesIO(client.get("/v1/voices/export", headers=auth(name)).content), weights_only=True)
            torch.testing.assert_close(exported["alices-import"]["embedding"], features)
            assert all("cannot clone" in answer for answer in synthesis_answers(client, tenants, "alices-voice", name))

        # Bob: not listed, not found, not changed, not exported, not usable.
        assert not {"alices-voice", "alices-import"} & {v["id"] for v in client.get("/v1/voices", headers=auth("bob")).json()["voices"]}
        for path in ("/v1/speakers", "/available_spks", "/v1/audio/voices"):
            assert "alices" not in client.get(path, headers=auth("bob")).text, path
        for method, path, body in [
            ("GET", "/v1/voices/alices-voice", None),
            ("GET", "/v1/voices/alices-voice/audio", None),
            ("PATCH", "/v1/voices/alices-voice", {"id": "bobs-now"}),
            ("DELETE", "/v1/voices/alices-voice", None),
            ("DELETE", "/v1/voices/alices-import", None),
        ]:
            assert client.request(method, path, json=body, headers=auth("bob")).status_code == 404, (method, path)
        exported = torch.load(io.BytesIO(client.get("/v1/voices/export", headers=auth("bob")).content), weights_only=True)
        assert exported == {}
        pt = io.BytesIO()
        torch.save({"alices-import": {"embedding": torch.zeros(1, 192)}}, pt)
        replaced = client.post("/v1/voices/import", files={"file": ("spk2info.pt", pt.getvalue())}, data={"replace": "true"}, headers=auth("bob"))
        assert replaced.status_code == 409
        assert create_voice(client, "alices-voice", speech, "bob").status_code == 409
        for answer in synthesis_answers(client, tenants, "alices-voice", "bob"):
            assert "alices-voice" in answer and "cannot clone" not in answer, answer

        # Alice's voices are untouched, and still hers to change.
        exported = torch.load(io.BytesIO(client.get("/v1/voices/export", headers=auth("alice")).content), weights_only=True)
        torch.testing.assert_close(exported["alices-import"]["embedding"], features)
        assert client.patch("/v1/voices/alices-voice", json={"owner": "bob"}, headers=auth("alice")).status_code == 403
        renamed = client.patch("/v1/voices/alices-voice", json={"id": "alices-voice-2"}, headers=auth("alice"))
        assert renamed.status_code == 200 and renamed.json()["owner"] == "alice"
        assert client.delete("/v1/voices/alices-voice-2", headers=auth("alice")).status_code == 204
        assert client.delete("/v1/voices/alices-import", headers=auth("ops")).status_code == 204


def test_voices_from_before_tenants_are_the_admins_until_handed_over(tenants: ServerThread, speech: bytes) -> None:
    samples, rate = decode_audio(speech)
    registry = VoiceRegistry(tenants.app.state.registry.root)
    registry.create("legacy", Audio(samples, rate), "This is my voice.")
    meta_path = registry.root / "legacy" / "voice.json"
    meta = json.loads(meta_path.read_text())
    del meta["owner"]  # as written before voices had owners
    meta_path.write_text(json.dumps(meta))
    with httpx.Client(base_url=tenants.url, timeout=30) as client:
        for name in ("alice", "bob"):
            assert client.get("/v1/voices/legacy", headers=auth(name)).status_code == 404
        assert client.get("/v1/voices/legacy", headers=auth("ops")).json()["owner"] is None
        assert client.patch("/v1/voices/legacy", json={"owner": "mallory"}, headers=auth("ops")).status_code == 400
        handed = client.patch("/v1/voices/legacy", json={"owner": "alice"}, headers=auth("ops"))
        assert handed.status_code == 200 and handed.json()["owner"] == "alice"
        assert client.get("/v1/voices/legacy", headers=auth("alice")).status_code == 200
        assert client.get("/v1/voices/legacy", headers=auth("bob")).status_code == 404
        assert client.delete("/v1/voices/legacy", headers=auth("alice")).status_code == 204


def test_key_file_roles(tmp_path: Path) -> None:
    store = KeyStore.from_settings(settings(tmp_path))
    assert {key.name: key.admin for key in store.keys} == {"alice": False, "bob": False, "ops": True}
    listed = Settings.model_validate({"auth": {"api_keys": ["a"], "admin_keys": ["b"]}})
    assert [(key.name, key.admin) for key in KeyStore.from_settings(listed).keys] == [("key1", False), ("admin1", True)]
    clash = tmp_path / "clash.toml"
    clash.write_text('[[keys]]\nkey = "c"\nname = "key1"\n')
    with pytest.raises(ValueError, match="key1"):
        KeyStore.from_settings(Settings.model_validate({"auth": {"api_keys": ["a"], "keys_file": str(clash)}}))
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('[[keys]]\nkey = "c"\nname = "x"\nadmin = true\n[[keys]]\nkey = "d"\nname = "x"\n')
    with pytest.raises(ValueError, match="all of them admin"):
        KeyStore.from_settings(Settings.model_validate({"auth": {"keys_file": str(mixed)}}))
