"""Schemathesis against our own ``/openapi.json``: no 5xx, no crash, responses as documented.

The server under test has small limits (60 characters of text, 200 kB
uploads), so no valid call synthesizes long audio and every route can be
fuzzed. Half the cases that name a voice or a session get a live one, so the
fuzzer reaches past the 404s into the routes' real work. The routes that read
their fields by hand (seed B's forms and query strings), which the schema
cannot describe, get a Hypothesis test of their own.
"""

from __future__ import annotations

import contextlib
import json
import queue
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator

import httpx
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import schemathesis
import websockets.sync.client
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from cosyvoice import Audio
from gateway.app import create_app
from gateway.errors import OPENAI_PATHS
from gateway.settings import Settings
from support.servers import ServerThread

EXAMPLES_PER_OPERATION = 50
LIVE_VOICE = "fuzz-voice"
# Streams that only end when their session does: a live id would hang the call.
NO_LIVE_SESSION = ("/v1/sessions/{session_id}/events",)


@schemathesis.check
def openai_error_envelope(ctx, response, case) -> None:
    """OpenAI routes answer errors in OpenAI's envelope, and schema violations with 400, not 422."""
    if not case.path.startswith(OPENAI_PATHS) or response.status_code < 400:
        return None
    assert response.status_code != 422, "OpenAI routes answer schema violations with 400"
    error = json.loads(response.content)["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] in ("invalid_request_error", "server_error"), error
    return None


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection, openai_error_envelope]  # fmt: skip


class LiveSession:
    """A real-time session held open by a WebSocket client, reopened whenever a case closes it."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.id = ""
        self._socket = None

    def ensure(self) -> str:
        if self.server.app.state.sessions.get(self.id) is None:
            self.close()
            opened: queue.Queue = queue.Queue()
            threading.Thread(target=self._hold, args=(opened,), daemon=True).start()
            self.id, self._socket = opened.get(timeout=10)
        return self.id

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def _hold(self, opened: queue.Queue) -> None:
        """Open the session, then read all it sends until either side closes it (so paced audio never backs up)."""
        with websockets.sync.client.connect(self.server.url.replace("http", "ws") + "/ws/v1/session") as socket:
            opened.put((json.loads(socket.recv(timeout=10))["session"]["session_id"], socket))
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                for _ in socket:
                    pass


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "prompts").mkdir()
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(root / "data"), "prompt_dir": str(root / "prompts")},
            "limits": {"max_text_chars": 60, "max_upload_bytes": 200_000, "request_timeout": 20},
            "webrtc": {"host_addresses": ["127.0.0.1"]},
        }
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_session(fuzz_server: ServerThread) -> Iterator[LiveSession]:
    session = LiveSession(fuzz_server)
    yield session
    session.close()


def _openapi() -> dict:
    """Our schema, from an app that is never started (routes do not depend on settings)."""
    with tempfile.TemporaryDirectory() as data_dir, warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. duplicate operation ids
        return create_app(Settings.model_validate({"paths": {"data_dir": data_dir}})).openapi()


schema = schemathesis.openapi.from_dict(
    _openapi(),
    config=SchemathesisConfig.from_dict(
        {"generation": {"max-examples": EXAMPLES_PER_OPERATION}, "phases": {"stateful": {"enabled": False}}}
    ),
)


@schema.parametrize()
@hypothesis.settings(database=None, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_api_has_no_server_errors_and_answers_as_documented(
    case, fuzz_server: ServerThread, live_session: LiveSession
) -> None:
    parameters = case.path_parameters or {}
    if "voice_id" in parameters and _coin(parameters["voice_id"]):
        parameters["voice_id"] = _ensure_voice(fuzz_server)
    if "session_id" in parameters and case.path not in NO_LIVE_SESSION and _coin(parameters["session_id"]):
        parameters["session_id"] = live_session.ensure()
    case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=30)


def _coin(value: object) -> bool:
    """A fair, reproducible coin: the same generated case always gets the same id."""
    return zlib.crc32(repr(value).encode()) % 2 == 0


def _ensure_voice(server: ServerThread) -> str:
    registry = server.app.state.registry
    if LIVE_VOICE not in registry:
        rate = 16000
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(rate * 2) / rate).astype(np.float32)
        registry.create(LIVE_VOICE, Audio(tone, rate), "A tone.")
    return LIVE_VOICE


SEED_B_FIELDS = {
    "/inference_sft": ("tts_text", "spk_id"),
    "/inference_zero_shot": ("tts_text", "prompt_text", "prompt_wav"),
    "/inference_cross_lingual": ("tts_text", "prompt_wav"),
    "/inference_instruct": ("tts_text", "spk_id", "instruct_text"),
    "/inference_instruct2": ("tts_text", "instruct_text", "prompt_wav"),
}
_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=80) | st.sampled_from(["joe", "Hello there.", ""])
_files = st.binary(max_size=2000) | st.just(b"RIFF\x24\x00\x00\x00WAVEfmt ")


@pytest.mark.parametrize("path", sorted(SEED_B_FIELDS))
def test_seed_b_fields_never_cause_server_errors(fuzz_server: ServerThread, path: str) -> None:
    """Any subset of the fields, as text or as files, in the query or the form, GET or POST."""

    @hypothesis.settings(max_examples=30, database=None, deadline=None)
    @hypothesis.given(
        fields=st.dictionaries(st.sampled_from(SEED_B_FIELDS[path]), _texts | _files.map(lambda data: ("upload.wav", data))),
        in_query=st.booleans(),
        method=st.sampled_from(["GET", "POST"]),
    )
    def probe(fields: dict, in_query: bool, method: str) -> None:
        texts = {name: value for name, value in fields.items() if isinstance(value, str)}
        files = {name: value for name, value in fields.items() if not isinstance(value, str)}
        response = httpx.request(
            method, fuzz_server.url + path, params=texts if in_query else None,
            data=None if in_query else texts, files=files or None, timeout=30,
        )  # fmt: skip
        assert response.status_code < 500, (fields, response.text)
        if response.status_code != 200:
            assert response.json()["detail"], response.text

    probe()
