"""Shared fixtures: one real gateway (embedded voice) for the whole session."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings
from support.servers import ServerThread


@pytest.fixture(scope="session")
def prompt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory server-side prompt paths may name (filled by ``speech_wav``)."""
    return tmp_path_factory.mktemp("prompts")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, prompt_dir: Path) -> ServerThread:
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(data_dir), "prompt_dir": str(prompt_dir)},
            "limits": {"max_text_chars": 2000, "max_upload_bytes": 2_000_000},
            "webrtc": {"host_addresses": ["127.0.0.1"]},
        }
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def speech_wav(gateway: ServerThread, prompt_dir: Path) -> bytes:
    """A real 22.05 kHz speech recording (the embedded voice), usable as a prompt; also saved as prompt.wav."""
    body = httpx.post(
        gateway.url + "/v1/tts", json={"text": "This is my voice, please clone it carefully.", "seed": 1}, timeout=30
    ).json()
    data = base64.b64decode(body["audio"])
    (prompt_dir / "prompt.wav").write_bytes(data)
    return data
