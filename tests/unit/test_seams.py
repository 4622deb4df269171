"""The gateway's seams: speech parameters as one value, domain errors in the service layer, one status table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from cosyvoice import Audio, Capabilities, InvalidRequest, Mode, SpeechParams, SynthesisRequest, VoiceNotFound
from cosyvoice.voices import VoiceRegistry
from gateway.admission import Admission, Overloaded
from gateway.errors import STATUS, install_error_handlers
from gateway.metrics import Metrics
from gateway.refusals import PathRefused, UploadTooLarge
from gateway.settings import Settings
from gateway.synthesis import Synthesizer

CAPS = Capabilities("stub", "stub", frozenset(Mode), 16000, ("joe",), "joe")


def synthesizer(tmp_path: Path, **settings: dict) -> Synthesizer:
    """A synthesizer over an engine that only reports its capabilities (nothing here synthesizes)."""
    metrics = Metrics()
    gate = Admission(max_syntheses=1, queue_size=0, queue_timeout=0, max_sessions={}, metrics=metrics)
    engine = SimpleNamespace(capabilities=CAPS)
    return Synthesizer(engine, VoiceRegistry(tmp_path), Settings.model_validate(settings), gate, metrics)


def test_a_request_carries_every_speech_parameter(tmp_path: Path) -> None:
    prompt = Audio(np.zeros(16000, np.float32), 16000)
    values = {
        "voice": "joe", "mode": Mode.INSTRUCT2, "speed": 1.5, "seed": 7, "instruct_text": "slowly",
        "prompt_text": "hello", "prompt_audio": prompt, "source_audio": prompt,
    }  # fmt: skip
    assert set(values) == {param.name for param in dataclasses.fields(SpeechParams)}, "a value for every field"
    request = synthesizer(tmp_path).request("Hi\x00there", SpeechParams(**values), stream=False)
    assert {name: getattr(request, name) for name in values} == values
    assert (request.text, request.stream, request.saved_voice) == ("Hi there", False, None)


def test_the_service_layer_raises_domain_errors_not_http(tmp_path: Path) -> None:
    synth = synthesizer(tmp_path, limits={"max_upload_bytes": 1024})
    with pytest.raises(UploadTooLarge, match="2000 bytes; the limit is 1024"):
        synth.audio_from_bytes(b"x" * 2000, "prompt_audio")
    with pytest.raises(PathRefused, match="server-side paths are disabled"):
        synth.audio_from_path("a.wav", "prompt_wav_path")
    outside = synthesizer(tmp_path, paths={"prompt_dir": str(tmp_path)})
    with pytest.raises(PathRefused, match="outside the prompt directory"):
        outside.audio_from_path("../escape.wav", "prompt_wav_path")


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (UploadTooLarge("too big"), 413, {}),
        (PathRefused("not there"), 403, {}),
        (InvalidRequest("bad"), 400, {}),
        (VoiceNotFound("no such voice"), 404, {}),
        (Overloaded("busy", reason="queue_full", retry_after=3), 503, {"retry-after": "3"}),
    ],
)
def test_one_table_maps_domain_errors_to_http(error: Exception, status: int, headers: dict[str, str]) -> None:
    app = FastAPI()
    install_error_handlers(app)

    async def fail() -> None:
        raise error

    app.add_api_route("/v1/tts", fail)
    app.add_api_route("/v1/audio/speech", fail)
    with TestClient(app) as client:
        plain, openai = client.get("/v1/tts"), client.get("/v1/audio/speech")
    assert (plain.status_code, plain.json()) == (status, {"detail": str(error)})
    assert openai.status_code == status and openai.json()["error"]["message"] == str(error)
    assert {name: plain.headers[name] for name in headers} == headers


def test_the_table_puts_each_subclass_before_its_base() -> None:
    kinds = [kind for kind, _ in STATUS]
    for index, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:index]), f"{kind.__name__} is unreachable"
