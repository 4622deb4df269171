"""Operations: metrics, admission control, API keys, CORS, request timeouts, graceful shutdown."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets.sync.client

from gateway.settings import Settings
from media.containers import wav_bytes
from support.servers import ServerProcess, ServerThread, http_status
from support.waiting import wait_until

KEY = "sk-test-0123456789"
LONG = " ".join(f"Sentence number {n} keeps this synthesis going for a while." for n in range(30))


def server(tmp_path: Path, **sections) -> ServerThread:
    config = {"paths": {"data_dir": str(tmp_path)}, "embedded": {"workers": 1}, **sections}
    return ServerThread(Settings.model_validate(config)).start()


def test_metrics_report_latency_rtf_audio_sessions_and_loop_lag(gateway: ServerThread) -> None:
    httpx.post(gateway.url + "/v1/tts", json={"text": "Counting this one."}, timeout=30)
    url = gateway.url.replace("http", "ws") + "/ws/v1/session"
    with websockets.sync.client.connect(url) as socket:
        socket.recv(timeout=10)
        socket.send(json.dumps({"type": "text", "text": "And this session too.", "flush": True}))
        while True:
            message = socket.recv(timeout=30)
            if isinstance(message, str) and json.loads(message)["type"] == "utterance.done":
                break
        text = httpx.get(gateway.url + "/metrics").text
        assert 'gateway_active_sessions{transport="websocket"} 1.0' in text
    for name in [
        'gateway_time_to_first_audio_seconds_count{mode="sft",transport="http"}',
        'gateway_time_to_first_audio_seconds_count{mode="sft",transport="websocket"}',
        'gateway_real_time_factor_count{transport="http"}',
        'gateway_audio_seconds_total{transport="websocket"}',
        'gateway_syntheses_total{outcome="done",transport="http"}',
        "gateway_event_loop_lag_seconds_count",
        "gateway_voices ",
        "gateway_engine_busy ",
    ]:
        assert name in text, name
    lag_count = float(text.split("gateway_event_loop_lag_seconds_count ")[1].split()[0])
    assert lag_count > 5


def test_synthesis_capacity_queue_and_clean_503s(tmp_path: Path) -> None:
    busy = server(tmp_path, limits={"max_syntheses": 1, "queue_size": 1, "queue_timeout": 0.5})
    try:
        with httpx.stream("POST", busy.url + "/v1/tts/stream", json={"text": LONG}, timeout=30) as holding:
            chunks = holding.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)
            results: list[httpx.Response] = []
            queued = threading.Thread(target=lambda: results.append(httpx.post(busy.url + "/v1/tts", json={"text": "Queued."}, timeout=30)))
            queued.start()
            time.sleep(0.1)
            overflow = httpx.post(busy.url + "/v1/tts", json={"text": "No room."}, timeout=30)
            assert overflow.status_code == 503 and overflow.headers["retry-after"]
            assert "queue is full" in overflow.json()["detail"]
            queued.join()
            assert results[0].status_code == 503 and "within 0.5 s" in results[0].json()["detail"]
        # The slot is free again once the holder is done.
        wait_until(lambda: busy.app.state.admission.active == 0, 5, "slot released")
        assert httpx.post(busy.url + "/v1/tts", json={"text": "Now there is room."}, timeout=30).status_code == 200
        metrics = httpx.get(busy.url + "/metrics").text
        assert 'gateway_rejects_total{reason="queue_full"} 1.0' in metrics
        assert 'gateway_rejects_total{reason="queue_timeout"} 1.0' in metrics
    finally:
        busy.stop()


def assert_second_session_refused(url: str, message: str) -> None:
    """The first session opens; the second gets an error naming ``message`` and a 1013 close."""
    with websockets.sync.client.connect(url) as first:
        assert json.loads(first.recv(timeout=10))["type"] == "session.created"
        with websockets.sync.client.connect(url) as second:
            assert message in json.loads(second.recv(timeout=10))["message"]
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                second.recv(timeout=10)
            assert closed.value.rcvd.code == 1013


def test_session_capacity_refuses_cleanly(tmp_path: Path) -> None:
    full = server(tmp_path, limits={"max_websocket_sessions": 1, "max_webrtc_sessions": 0})
    try:
        assert_second_session_refused(full.url.replace("http", "ws") + "/ws/v1/session", "at capacity")
        offer = httpx.post(full.url + "/v1/webrtc/offer", json={"sdp": "m=audio", "type": "offer"})
        assert offer.status_code == 503 and "Retry-After" in offer.headers
    finally:
        full.stop()


def test_api_keys_rate_limits_and_cors(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nkey = "sk-limited"\nname = "limited"\nrequests_per_minute = 2\nmax_sessions = 1\n')
    secured = server(tmp_path / "data", auth={"api_keys": [KEY], "keys_file": str(keys_file)}, server={"cors_origins": ["https://app.example"]})
    try:
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(secured.url + "/v1/speakers").status_code == 401
        assert httpx.get(secured.url + "/v1/speakers").headers["www-authenticate"] == "Bearer"
        assert httpx.get(secured.url + "/v1/speakers", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(secured.url + "/v1/speakers", headers=bearer).status_code == 200
        assert httpx.get(secured.url + "/v1/health").status_code == 200, "health is public by default"
        assert httpx.get(secured.url + "/metrics").status_code == 401, "metrics are not"
        openai_error = httpx.post(secured.url + "/v1/audio/speech", json={})
        assert openai_error.status_code == 401 and openai_error.json()["error"]["type"] == "invalid_request_error"
        # Per-key rate limit.
        limited = {"Authorization": "Bearer sk-limited"}
        assert [httpx.get(secured.url + "/v1/speakers", headers=limited).status_code for _ in range(2)] == [200, 200]
        refused = httpx.get(secured.url + "/v1/speakers", headers=limited)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # WebSockets: query parameter or subprotocol; none closes with a policy code.
        ws = secured.url.replace("http", "ws") + "/ws/v1/session"
        with websockets.sync.client.connect(ws) as socket:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                socket.recv(timeout=10)
            assert closed.value.rcvd.code == 1008
        with websockets.sync.client.connect(ws + f"?api_key={KEY}") as socket:
            assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        with websockets.sync.client.connect(ws, subprotocols=[f"bearer.{KEY}"]) as socket:
            assert socket.subprotocol == f"bearer.{KEY}"
            assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        # CORS: only the configured origin.
        allowed = httpx.options(
            secured.url + "/v1/speakers",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
        other = httpx.get(secured.url + "/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        secured.stop()


def test_per_key_session_limit(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nkey = "sk-one"\nname = "one"\nmax_sessions = 1\n')
    secured = server(tmp_path / "data", auth={"keys_file": str(keys_file)})
    try:
        assert_second_session_refused(secured.url.replace("http", "ws") + "/ws/v1/session?api_key=sk-one", "live sessions")
    finally:
        secured.stop()


def test_request_timeout_cuts_off_long_synthesis(tmp_path: Path) -> None:
    # 2 s: room for the first clause on a loaded 2-core box (0.5 s sometimes cut before any audio);
    # the whole text is over a minute of audio, so an uncut response fails the size bound.
    quick = server(tmp_path, limits={"request_timeout": 2.0})
    try:
        started = time.monotonic()
        response = httpx.post(quick.url + "/v1/tts/stream", json={"text": LONG}, timeout=30)
        assert time.monotonic() - started < 5
        assert 0 < len(response.content) < 22050 * 2 * 30, "truncated, not the whole text"
    finally:
        quick.stop()


def test_graceful_shutdown_lets_sessions_finish(tmp_path: Path) -> None:
    process = ServerProcess("--data-dir", str(tmp_path), env={"GATEWAY_EMBEDDED_WORKERS": "1"})
    try:
        wait_until(lambda: http_status(process.url + "/v1/health") == 200, 60, "ready")
        url = process.url.replace("http", "ws") + "/ws/v1/session"
        events: list[str] = []
        with websockets.sync.client.connect(url) as socket:
            socket.recv(timeout=10)
            socket.send(json.dumps({"type": "text", "text": "Please let me finish this sentence before you go.", "flush": True}))
            while "utterance.first_audio" not in events:
                message = socket.recv(timeout=20)
                if isinstance(message, str):
                    events.append(json.loads(message)["type"])
            process.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert http_status(process.url + "/v1/health") is None, "no new connections while draining"
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                while True:
                    message = socket.recv(timeout=20)
                    if isinstance(message, str):
                        events.append(json.loads(message)["type"])
        assert events.index("utterance.done") < events.index("session.closed")
        # uvicorn re-raises the signal once shut down, so the exit status says "terminated".
        assert process.process.wait(20) in (0, -signal.SIGTERM)
    finally:
        process.stop()


def test_uploads_beyond_the_body_limit_are_413(gateway: ServerThread, speech_wav: bytes) -> None:
    huge = wav_bytes(np.zeros(2_000_000, np.float32), 16000)
    response = httpx.post(gateway.url + "/v1/voices", data={"id": "big"}, files={"audio": ("big.wav", huge)})
    assert response.status_code == 413


def test_every_answer_carries_a_request_id(tmp_path: Path) -> None:
    secured = server(
        tmp_path / "data", auth={"api_keys": [KEY]}, server={"cors_origins": ["https://app.example"]}, limits={"max_upload_bytes": 1024}
    )

    async def boom() -> None:
        raise RuntimeError("a bug")

    secured.app.add_api_route("/test/boom", boom)  # an unexpected exception: Starlette's outermost 500
    bearer = {"Authorization": f"Bearer {KEY}"}
    try:
        answers = {
            "ok": httpx.get(secured.url + "/v1/speakers", headers=bearer),
            "unauthorized": httpx.get(secured.url + "/v1/speakers"),
            "not found": httpx.get(secured.url + "/v1/nothing", headers=bearer),
            "invalid": httpx.post(secured.url + "/v1/tts", json={}, headers=bearer),
            "too large": httpx.post(secured.url + "/v1/tts", content=b"x" * 100_000, headers=bearer),
            "preflight": httpx.options(
                secured.url + "/v1/speakers", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
            ),
            "crash": httpx.get(secured.url + "/test/boom", headers=bearer),
            "streamed": httpx.post(secured.url + "/v1/tts/stream", json={"text": "Hello."}, headers=bearer, timeout=30),
        }
        assert [answers[name].status_code for name in answers] == [200, 401, 404, 422, 413, 200, 500, 200]
        ids = {name: answer.headers.get("x-request-id") for name, answer in answers.items()}
        assert all(ids.values()) and len(set(ids.values())) == len(ids), ids
        cors = httpx.get(secured.url + "/v1/health", headers={"Origin": "https://app.example"})
        assert "x-request-id" in cors.headers["access-control-expose-headers"].lower(), "browsers may read it"

        def echoed(offered: str) -> str:
            return httpx.get(secured.url + "/v1/health", headers={"X-Request-Id": offered}).headers["x-request-id"]

        assert echoed("req-7f3a.b_c:d/e+f=g@h") == "req-7f3a.b_c:d/e+f=g@h"
        assert echoed("x" * 128) == "x" * 128
        for unsafe in ("x" * 129, "has space", "new\tline", "semi;colon", "<script>"):
            replaced = echoed(unsafe)
            assert replaced != unsafe and len(replaced) == 32, unsafe
        ws = secured.url.replace("http", "ws") + f"/ws/v1/session?api_key={KEY}"
        with websockets.sync.client.connect(ws, additional_headers={"X-Request-Id": "ws-handshake-1"}) as socket:
            assert socket.response.headers["x-request-id"] == "ws-handshake-1"
    finally:
        secured.stop()


def test_the_access_log_names_the_request_id(tmp_path: Path) -> None:
    process = ServerProcess("--data-dir", str(tmp_path), env={"GATEWAY_EMBEDDED_WORKERS": "1"})
    try:
        process.wait_listening()
        httpx.get(process.url + "/v1/speakers", headers={"X-Request-Id": "find-me-in-the-log"})
    finally:
        output = process.stop()
    line = next(line for line in output.splitlines() if "/v1/speakers" in line)
    assert line.endswith("[find-me-in-the-log]"), line
