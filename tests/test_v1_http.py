"""Seed server C over real HTTP: synthesis, streaming, cancellation, bad input."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from media.pcm import from_s16le
from support.servers import ServerThread
from support.waiting import wait_until
from tests.audio_checks import assert_speech_like, decode_b64_wav, plausible_seconds

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs into the forest."
PARAGRAPH = " ".join(
    [
        "Welcome to the voice gateway.",
        "It turns text into speech while the text is still arriving.",
        "Browsers, phones and bots can all listen at the same time.",
        "Every clause is synthesized as soon as it is complete.",
    ]
)


def test_root_and_speakers(gateway: ServerThread) -> None:
    root = httpx.get(gateway.url + "/").json()
    assert root["name"] == "cosyvoice-gateway" and root["version"]
    speakers = httpx.get(gateway.url + "/v1/speakers").json()["speakers"]
    assert "joe" in speakers


def test_health_reports_the_loaded_engine(gateway: ServerThread) -> None:
    response = httpx.get(gateway.url + "/v1/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok", "gpu": False, "model": "piper:en_US-joe-medium", "engine": "embedded",
        "modes": ["sft"], "sample_rate": 22050,
    }  # fmt: skip


def test_non_stream_returns_base64_wav_of_speech(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/v1/tts", json={"text": SENTENCE}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    samples, rate = decode_b64_wav(body["audio"])
    assert rate == body["sample_rate"] == 22050
    low, high = plausible_seconds(SENTENCE)
    assert_speech_like(samples, rate, min_seconds=low, max_seconds=high)


def test_speed_changes_duration(gateway: ServerThread) -> None:
    def duration(speed: float) -> float:
        body = httpx.post(gateway.url + "/v1/tts", json={"text": SENTENCE, "speed": speed, "seed": 1}, timeout=30).json()
        samples, rate = decode_b64_wav(body["audio"])
        return len(samples) / rate

    normal, fast = duration(1.0), duration(2.0)
    assert 0.4 < fast / normal < 0.65


def test_seed_makes_output_reproducible(gateway: ServerThread) -> None:
    def render(seed: int) -> str:
        return httpx.post(gateway.url + "/v1/tts", json={"text": "Same words twice.", "seed": seed}, timeout=30).json()["audio"]

    assert render(7) == render(7)


@pytest.mark.parametrize("path,body", [("/v1/tts/stream", {}), ("/v1/tts", {"stream": True})])
def test_stream_returns_pcm_chunks_early(gateway: ServerThread, path: str, body: dict) -> None:
    started = time.monotonic()
    chunks: list[tuple[float, bytes]] = []
    with httpx.stream("POST", gateway.url + path, json={"text": PARAGRAPH, **body}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == "22050"
        for chunk in response.iter_raw():
            chunks.append((time.monotonic() - started, chunk))
    first, total = chunks[0][0], chunks[-1][0]
    assert first < total / 2, f"first chunk at {first:.3f} s of {total:.3f} s: not streaming"
    pcm = b"".join(chunk for _, chunk in chunks)
    assert len(pcm) % 2 == 0
    low, high = plausible_seconds(PARAGRAPH)
    assert_speech_like(from_s16le(pcm), 22050, min_seconds=low, max_seconds=high)


def test_client_disconnect_stops_the_workers(gateway: ServerThread) -> None:
    long_text = " ".join(f"This is sentence number {n} of a very long text." for n in range(40))
    pool = gateway.engine.pool
    wait_until(lambda: pool.busy == 0, 10, "idle pool before the test")
    with httpx.stream("POST", gateway.url + "/v1/tts/stream", json={"text": long_text}, timeout=30) as response:
        next(response.iter_raw())
        assert pool.busy >= 1
    disconnected = time.monotonic()
    wait_until(lambda: pool.busy == 0, 5, "workers idle after the client left")
    idle_after = time.monotonic() - disconnected
    # The whole text is ~40 clauses, several seconds of work: it must not keep going.
    assert idle_after < 1.0, f"workers stayed busy {idle_after:.2f} s after the disconnect"
    time.sleep(0.5)
    assert pool.busy == 0


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"text": ""}, 400, "text is empty"),
        ({"text": "   "}, 400, "text is empty"),
        ({"text": "x" * 2001}, 400, "limit is 2000"),
        ({"text": "hello", "speaker": "nobody"}, 400, "unknown voice 'nobody'"),
        ({"text": "hello", "mode": "zero_shot"}, 400, "mode 'zero_shot' is not supported by engine 'embedded'"),
        ({"text": "hello", "mode": "instruct2"}, 400, "mode 'instruct2' is not supported"),
        ({"text": "hello", "mode": "vc"}, 400, "mode 'vc' is not supported"),
        ({"text": "hello", "mode": "karaoke"}, 422, "mode"),
        ({"text": 5}, 422, "text"),
        ({"text": "hello", "speed": "fast"}, 422, "speed"),
        ({"text": "hello", "speed": 3.0}, 422, "speed"),
        ({}, 422, "text"),
    ],
)
def test_bad_input_is_a_clear_client_error(gateway: ServerThread, body: dict, status: int, message: str) -> None:
    for path in ("/v1/tts", "/v1/tts/stream"):
        response = httpx.post(gateway.url + path, json=body, timeout=30)
        assert response.status_code == status, response.text
        assert message in response.text
    assert httpx.post(gateway.url + "/v1/tts", json={"text": "Still here."}, timeout=30).status_code == 200


def test_malformed_json_is_422(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/v1/tts", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_concurrent_requests_all_get_speech(gateway: ServerThread) -> None:
    import concurrent.futures

    def one(i: int) -> np.ndarray:
        body = httpx.post(gateway.url + "/v1/tts", json={"text": f"Caller number {i} is speaking now."}, timeout=60).json()
        return decode_b64_wav(body["audio"])[0]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for samples in results:
        assert_speech_like(samples, 22050, min_seconds=1.0, max_seconds=5.0)
