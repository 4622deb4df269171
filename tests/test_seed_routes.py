"""Seed servers A and B, and seed C's additions, as their existing clients call them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets.sync.client

from media.pcm import from_s16le
from support.servers import ROOT, ServerThread
from support.waiting import wait_until
from tests.audio_checks import assert_speech_like, decode_container, decode_wav, plausible_seconds

TEXT = "Hello there, this is the seed compatible route."


# Seed A


def test_seed_a_mp3_stream(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/tts", json={"tts_text": TEXT, "spk_id": "joe"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert "filename=tts.mp3" in response.headers["content-disposition"]
    samples, rate = decode_container(response.content, "mp3")
    assert rate == 22050
    low, high = plausible_seconds(TEXT)
    assert_speech_like(samples, rate, min_seconds=low, max_seconds=high + 0.2)


def test_seed_a_pcm_headers_and_reproducible_seed(gateway: ServerThread) -> None:
    def render(seed: int) -> httpx.Response:
        body = {"tts_text": TEXT, "spk_id": "joe", "stream": True, "seed": seed}
        return httpx.post(gateway.url + "/tts/pcm", json=body, timeout=30)

    first, second = render(5), render(5)
    assert first.headers["content-type"] == "audio/L16"
    assert first.headers["x-sample-rate"] == "22050"
    assert first.headers["x-channels"] == "1" and first.headers["x-bit-depth"] == "16"
    assert "filename=tts.pcm" in first.headers["content-disposition"]
    assert first.content == second.content
    assert_speech_like(from_s16le(first.content), 22050, min_seconds=1.5, max_seconds=6)


def test_seed_a_instruct_without_instruction_is_sft(gateway: ServerThread) -> None:
    plain = httpx.post(gateway.url + "/tts/instruct", json={"tts_text": TEXT, "spk_id": "joe"}, timeout=30)
    assert plain.status_code == 200 and plain.headers["content-type"] == "audio/mpeg"
    styled = httpx.post(
        gateway.url + "/tts/instruct", json={"tts_text": TEXT, "spk_id": "joe", "instruct_text": "Speak softly."}
    )
    assert styled.status_code == 400
    assert "mode 'instruct' is not supported by engine 'embedded'" in styled.json()["detail"]


def test_seed_a_cloning_routes_validate_audio_then_name_the_mode(gateway: ServerThread, speech_wav: bytes) -> None:
    prompt = base64.b64encode(speech_wav).decode()
    zero_shot = {"tts_text": TEXT, "prompt_text": "This is my voice.", "prompt_audio_base64": prompt}
    response = httpx.post(gateway.url + "/tts/zero_shot", json=zero_shot)
    assert response.status_code == 400 and "mode 'zero_shot' is not supported" in response.json()["detail"]
    response = httpx.post(gateway.url + "/tts/cross_lingual", json={"tts_text": TEXT, "prompt_audio_base64": prompt})
    assert response.status_code == 400 and "mode 'cross_lingual' is not supported" in response.json()["detail"]
    for bad, message in [("not base64!", "not valid base64"), (base64.b64encode(b"RIFF1234junk").decode(), "prompt_audio_base64")]:
        response = httpx.post(gateway.url + "/tts/zero_shot", json={**zero_shot, "prompt_audio_base64": bad})
        assert response.status_code == 400 and message in response.json()["detail"]


def test_seed_a_clone_saves_a_voice_that_survives_in_the_lists(gateway: ServerThread, speech_wav: bytes) -> None:
    files = {"prompt_audio": ("me.wav", speech_wav, "audio/wav")}
    response = httpx.post(gateway.url + "/clone", data={"prompt_text": "This is my voice.", "spk_id": "seed-a-clone"}, files=files)
    assert response.status_code == 200
    assert response.json() == {"status": "success", "message": "voice 'seed-a-clone' saved", "spk_id": "seed-a-clone"}
    for path in ("/available_spks", "/v1/speakers"):
        assert "seed-a-clone" in httpx.get(gateway.url + path).json()["speakers"]
    assert "seed-a-clone" in httpx.get(gateway.url + "/v1/audio/voices").json()["voices"]
    # The embedded voice cannot speak with a cloned voice, and says so.
    response = httpx.post(gateway.url + "/tts", json={"tts_text": TEXT, "spk_id": "seed-a-clone"})
    assert response.status_code == 400 and "cannot clone voices" in response.json()["detail"]
    again = httpx.post(gateway.url + "/clone", data={"prompt_text": "x", "spk_id": "seed-a-clone"}, files=files)
    assert again.status_code == 409


def test_seed_a_upload_audio_round_trip(gateway: ServerThread, speech_wav: bytes) -> None:
    response = httpx.post(gateway.url + "/upload_audio", files={"file": ("voice.wav", speech_wav, "audio/wav")})
    assert response.status_code == 200
    assert response.json()["filename"] == "voice.wav"
    assert base64.b64decode(response.json()["audio_base64"]) == speech_wav
    garbage = httpx.post(gateway.url + "/upload_audio", files={"file": ("x.wav", os.urandom(4000), "audio/wav")})
    assert garbage.status_code == 400


# Seed B


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_seed_b_sft_streams_raw_pcm(gateway: ServerThread, method: str) -> None:
    fields = {"tts_text": TEXT, "spk_id": "joe"}
    response = httpx.request(method, gateway.url + "/inference_sft", data=fields, files={"unused": ("a", b"")}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-sample-rate"] == "22050"
    assert_speech_like(from_s16le(response.content), 22050, min_seconds=1.5, max_seconds=6)
    by_query = httpx.get(gateway.url + "/inference_sft", params=fields, timeout=30)
    assert by_query.status_code == 200 and len(by_query.content) > 22050


def test_seed_b_errors(gateway: ServerThread, speech_wav: bytes) -> None:
    missing = httpx.post(gateway.url + "/inference_sft", data={"tts_text": TEXT})
    assert missing.status_code == 422 and "spk_id" in missing.text
    files = {"prompt_wav": ("p.wav", speech_wav, "audio/wav")}
    for path, fields in [
        ("/inference_zero_shot", {"tts_text": TEXT, "prompt_text": "This is my voice."}),
        ("/inference_cross_lingual", {"tts_text": TEXT}),
        ("/inference_instruct2", {"tts_text": TEXT, "instruct_text": "Happily."}),
    ]:
        response = httpx.post(gateway.url + path, data=fields, files=files)
        assert response.status_code == 400 and "is not supported by engine 'embedded'" in response.text
    response = httpx.post(gateway.url + "/inference_instruct", data={"tts_text": TEXT, "spk_id": "joe", "instruct_text": "x"})
    assert response.status_code == 400
    not_a_file = httpx.post(gateway.url + "/inference_zero_shot", data={"tts_text": TEXT, "prompt_text": "x", "prompt_wav": "x"})
    assert not_a_file.status_code == 422


def test_seed_b_command_line_client_writes_a_playable_wav(gateway: ServerThread, tmp_path: Path) -> None:
    output = tmp_path / "out.wav"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.seed_client", "--host", "127.0.0.1", "--port", str(gateway.port),
         "--mode", "sft", "--tts_text", TEXT, "--spk_id", "joe", "--tts_wav", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples, rate = decode_wav(output.read_bytes())
    assert rate == 22050
    assert_speech_like(samples, rate, min_seconds=1.5, max_seconds=6)
    failing = subprocess.run(
        [sys.executable, "-m", "gateway.seed_client", "--host", "127.0.0.1", "--port", str(gateway.port),
         "--mode", "sft", "--tts_text", TEXT, "--spk_id", "nobody", "--tts_wav", str(tmp_path / "no.wav")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failing.returncode == 1 and "unknown voice" in failing.stderr


# Seed C additions


def test_seed_c_server_paths_stay_inside_the_prompt_dir(gateway: ServerThread, speech_wav: bytes, prompt_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(speech_wav)
    (prompt_dir / "escape.wav").unlink(missing_ok=True)
    (prompt_dir / "escape.wav").symlink_to(outside)
    body = {"text": TEXT, "mode": "zero_shot", "prompt_text": "This is my voice."}

    def status(path: str) -> tuple[int, str]:
        response = httpx.post(gateway.url + "/v1/tts", json={**body, "prompt_wav_path": path})
        return response.status_code, response.json()["detail"]

    assert status("prompt.wav")[0] == 400 and "mode 'zero_shot'" in status("prompt.wav")[1]  # found, then refused
    assert status(str(prompt_dir / "prompt.wav"))[0] == 400  # absolute inside is fine
    for escape in ["../secret.wav", str(outside), "escape.wav", "/etc/passwd", "sub/../../secret.wav"]:
        code, detail = status(escape)
        assert code == 403 and "outside the prompt directory" in detail, escape
    assert status("missing.wav") == (400, "prompt_wav_path: no such file in the prompt directory: missing.wav")
    vc = {"text": "", "mode": "vc", "source_wav_path": "../secret.wav", "prompt_wav_path": "prompt.wav"}
    assert httpx.post(gateway.url + "/v1/tts", json=vc).status_code == 403


def test_seed_c_new_modes_are_refused_by_name(gateway: ServerThread, speech_wav: bytes) -> None:
    prompt = base64.b64encode(speech_wav).decode()
    for body in (
        {"text": TEXT, "mode": "instruct2", "instruct_text": "Whisper.", "prompt_audio_base64": prompt},
        {"text": "", "mode": "vc", "source_audio_base64": prompt, "prompt_audio_base64": prompt},
    ):
        response = httpx.post(gateway.url + "/v1/tts", json=body)
        assert response.status_code == 400 and f"mode '{body['mode']}' is not supported" in response.json()["detail"]


def test_seed_c_websocket_streams_pcm_then_done(gateway: ServerThread) -> None:
    url = gateway.url.replace("http", "ws") + "/ws/v1/tts"
    with websockets.sync.client.connect(url) as socket:
        socket.send(json.dumps({"text": TEXT, "speaker": "joe"}))
        pcm = bytearray()
        while True:
            message = socket.recv(timeout=30)
            if isinstance(message, bytes):
                pcm += message
            else:
                assert json.loads(message) == {"done": True}
                break
    assert_speech_like(from_s16le(bytes(pcm)), 22050, min_seconds=1.5, max_seconds=6)


@pytest.mark.parametrize(
    "config,message",
    [({"text": ""}, "text is empty"), ({"text": "hi", "speaker": "nobody"}, "unknown voice"), ({"speed": "x"}, "speed")],
)
def test_seed_c_websocket_bad_config(gateway: ServerThread, config: dict, message: str) -> None:
    url = gateway.url.replace("http", "ws") + "/ws/v1/tts"
    with websockets.sync.client.connect(url) as socket:
        socket.send(json.dumps(config))
        reply = json.loads(socket.recv(timeout=10))
        assert message in reply["error"] and reply["done"] is True
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 1008


def test_seed_c_websocket_disconnect_stops_synthesis(gateway: ServerThread) -> None:
    pool = gateway.engine.pool
    wait_until(lambda: pool.busy == 0, 10, "idle pool")
    url = gateway.url.replace("http", "ws") + "/ws/v1/tts"
    text = " ".join(f"Sentence {n} is long enough to keep a worker busy." for n in range(40))
    with websockets.sync.client.connect(url) as socket:
        socket.send(json.dumps({"text": text}))
        assert isinstance(socket.recv(timeout=30), bytes)
    left = time.monotonic()
    wait_until(lambda: pool.busy == 0, 5, "workers idle")
    assert time.monotonic() - left < 1.0
