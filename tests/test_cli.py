"""``python -m gateway`` as users run it: readiness, settings layers, start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.servers import ROOT, ServerProcess, get_json_and_status, http_status
from support.waiting import wait_until


def test_health_is_not_ready_before_the_engine_and_ready_after(tmp_path: Path) -> None:
    server = ServerProcess("--data-dir", str(tmp_path), env={"GATEWAY_EMBEDDED_WORKERS": "1"})
    try:
        server.wait_listening()
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = httpx.get(server.url + "/v1/health")
            seen.append((response.status_code, response.json()["status"]))
            if response.status_code == 200:
                break
            time.sleep(0.05)
        assert seen[0] == (503, "loading"), seen[:3]
        assert seen[-1] == (200, "ok")
        speech = httpx.post(server.url + "/v1/tts", json={"text": "Ready now."}, timeout=30)
        assert speech.status_code == 200
    finally:
        server.stop()


def test_environment_and_config_file_reach_the_server(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[limits]\nmax_text_chars = 50\n[embedded]\nworkers = 1\n")
    server = ServerProcess("--config", str(config), env={"GATEWAY_LIMITS_MAX_TEXT_CHARS": "20"})
    try:
        wait_until(lambda: http_status(server.url + "/v1/health") == 200, 60, "ready")
        response = httpx.post(server.url + "/v1/tts", json={"text": "x" * 21})
        assert response.status_code == 400 and "limit is 20" in response.text
    finally:
        server.stop()


def test_a_broken_voice_model_is_reported_by_health(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    (tmp_path / "broken.onnx.json").write_text(json.dumps({"audio": {"sample_rate": 16000}}))
    server = ServerProcess(env={"GATEWAY_EMBEDDED_VOICE_MODEL": str(model), "GATEWAY_EMBEDDED_WORKERS": "1"})
    try:
        wait_until(lambda: (get_json_and_status(server.url + "/v1/health") or ({},))[0].get("status") == "error", 60, "error")
        health = httpx.get(server.url + "/v1/health")
        assert health.status_code == 503
        assert "exited" in health.json()["detail"]
        refused = httpx.post(server.url + "/v1/tts", json={"text": "hello"})
        assert refused.status_code == 503
    finally:
        server.stop()


def test_start_up_errors_are_one_clear_line(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = run(GATEWAY_EMBEDDED_VOICE_MODEL=str(tmp_path / "none.onnx"))
    assert missing.returncode != 0
    assert "error: embedded voice model not found" in missing.stderr
    bad_port = run("--config", str(tmp_path / "absent.toml"))
    assert bad_port.returncode != 0 and "cannot read config file" in bad_port.stderr
    typo = run(GATEWAY_SERVR_PORT="1")
    assert typo.returncode != 0 and "no settings section matches" in typo.stderr
