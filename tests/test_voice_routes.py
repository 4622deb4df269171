"""The voice registry over HTTP, across restarts and crashes."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.servers import ServerProcess, ServerThread, http_status
from support.waiting import wait_until
from tests.audio_checks import decode_wav


def test_create_list_get_rename_delete(gateway: ServerThread, speech_wav: bytes) -> None:
    url = gateway.url + "/v1/voices"
    created = httpx.post(url, data={"id": "anna", "prompt_text": "This is my voice."}, files={"audio": ("a.wav", speech_wav)})
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "anna" and created.json()["sample_rate"] == 22050
    as_json = httpx.post(url, json={"id": "ben", "prompt_text": "Hi.", "audio_base64": base64.b64encode(speech_wav).decode()})
    assert as_json.status_code == 201
    listed = httpx.get(url).json()
    assert {"anna", "ben"} <= {voice["id"] for voice in listed["voices"]} and listed["builtin"] == ["joe"]
    assert httpx.get(url + "/anna").json()["prompt_text"] == "This is my voice."
    samples, rate = decode_wav(httpx.get(url + "/anna/audio").content)
    assert rate == 22050 and len(samples) / rate > 1.0
    renamed = httpx.patch(url + "/anna", json={"id": "anna2"})
    assert renamed.status_code == 200 and renamed.json()["id"] == "anna2"
    assert httpx.get(url + "/anna").status_code == 404
    assert httpx.delete(url + "/anna2").status_code == 204
    assert httpx.delete(url + "/anna2").status_code == 404
    assert "anna2" not in httpx.get(gateway.url + "/v1/speakers").json()["speakers"]


def test_upload_validation(gateway: ServerThread, speech_wav: bytes) -> None:
    url = gateway.url + "/v1/voices"

    def create(voice_id: str, audio: bytes) -> httpx.Response:
        return httpx.post(url, data={"id": voice_id, "prompt_text": "x"}, files={"audio": ("a.wav", audio)})

    samples, rate = decode_wav(speech_wav)
    from media.containers import wav_bytes

    assert create("dup", speech_wav).status_code == 201
    assert create("dup", speech_wav).status_code == 409
    assert create("joe", speech_wav).status_code == 409
    assert create("junk", os.urandom(5000)).status_code == 415
    assert create("empty", b"").status_code == 400
    assert create("short", wav_bytes(samples[: rate // 2], rate)).status_code == 400
    assert create("silent", wav_bytes(np.zeros(rate * 3, np.float32), rate)).status_code == 400
    assert create("telephone", wav_bytes(samples[::3], rate // 3)).status_code == 400
    assert create("../escape", speech_wav).status_code == 400
    assert create("huge", b"RIFF" + os.urandom(2_100_000)).status_code == 413
    bad_json = httpx.post(url, json={"id": "j", "audio_base64": "@@@"})
    assert bad_json.status_code == 415
    assert httpx.post(url, content=b"id=x", headers={"content-type": "text/plain"}).status_code == 415
    assert httpx.post(url, json={"id": "nofield"}).status_code == 422


def test_spk2info_import_and_export(gateway: ServerThread) -> None:
    torch = pytest.importorskip("torch")
    import io

    entries = {"imported-a": {"embedding": torch.randn(1, 192)}, "imported-b": {"embedding": torch.randn(1, 192)}}
    buffer = io.BytesIO()
    torch.save(entries, buffer)
    response = httpx.post(gateway.url + "/v1/voices/import", files={"file": ("spk2info.pt", buffer.getvalue())})
    assert response.status_code == 200 and response.json() == {"imported": ["imported-a", "imported-b"]}
    assert httpx.get(gateway.url + "/v1/voices/imported-a").json()["source"] == "spk2info"
    exported = torch.load(io.BytesIO(httpx.get(gateway.url + "/v1/voices/export").content), weights_only=True)
    for name, entry in entries.items():
        torch.testing.assert_close(exported[name]["embedding"], entry["embedding"])
    garbage = httpx.post(gateway.url + "/v1/voices/import", files={"file": ("spk2info.pt", b"garbage")})
    assert garbage.status_code == 415


def test_voices_survive_a_restart_and_a_sigkill_mid_upload(tmp_path: Path, speech_wav: bytes) -> None:
    args = ("--data-dir", str(tmp_path))
    env = {"GATEWAY_EMBEDDED_WORKERS": "1"}
    server = ServerProcess(*args, env=env)
    try:
        server.wait_listening()
        created = httpx.post(server.url + "/v1/voices", data={"id": "keeper", "prompt_text": "x"}, files={"audio": ("a.wav", speech_wav)})
        assert created.status_code == 201

        def upload_forever() -> None:
            for n in range(1000):
                try:
                    httpx.post(server.url + "/v1/voices", data={"id": f"v{n}", "prompt_text": "x"}, files={"audio": ("a.wav", speech_wav)})
                except httpx.HTTPError:
                    return

        uploader = threading.Thread(target=upload_forever)
        uploader.start()
        time.sleep(0.8)
        os.kill(server.process.pid, signal.SIGKILL)
        uploader.join(10)
    finally:
        server.stop()
    restarted = ServerProcess(*args, env=env)
    try:
        restarted.wait_listening()
        voices = httpx.get(restarted.url + "/v1/voices").json()["voices"]
        ids = {voice["id"] for voice in voices}
        assert "keeper" in ids and len(ids) > 1, "uploads before the kill are kept"
        for voice_id in ids:
            audio = httpx.get(f"{restarted.url}/v1/voices/{voice_id}/audio")
            assert audio.status_code == 200 and len(decode_wav(audio.content)[0]) > 22050
        assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".tmp")]
        wait_until(lambda: http_status(restarted.url + "/v1/health") == 200, 60, "ready")
    finally:
        restarted.stop()
