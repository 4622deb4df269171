"""Every upload route against the malformed-audio corpus: clear 4xx answers, no 5xx, no partial voices.

The embedded engine cannot clone, so a synthesis route that accepts a
prompt goes on to refuse the mode ("... not supported by engine
'embedded'"): that refusal comes only after the audio was decoded and
validated, so it tells "audio accepted" from "audio refused".
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets.sync.client

from media.pcm import from_s16le
from signaling.protocol import MAX_MESSAGE_CHARS
from support.servers import ServerThread
from tests.audio_checks import decode_wav
from tests.audio_corpus import Upload, Verdict, corpus

ACCEPTED_BY_SYNTHESIS = "not supported by engine 'embedded'"
MAX_PADDING_SECONDS = 0.1  # what an encoder may add or trim around the speech
TEXT = "A short sentence to speak."


@dataclass(frozen=True)
class Reply:
    status: int
    message: str


@dataclass(frozen=True)
class Route:
    """How one route takes an upload, and what it answers when the upload is good."""

    name: str
    field: str
    send: Callable[[str, str, bytes], httpx.Response]  # (base url, voice id, audio) -> response
    accepted: int  # status of an accepted upload
    undecodable: int = 400
    prompt: bool = True  # unfit prompts are refused (False: any decodable audio will do)
    empty_is_absent: bool = False  # an empty base64 field counts as "no audio given"
    creates_voice: bool = False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _form(path: str, field: str, **fields: str) -> Callable[[str, str, bytes], httpx.Response]:
    def send(url: str, voice_id: str, audio: bytes) -> httpx.Response:
        values = {name: value.replace("{id}", voice_id) for name, value in fields.items()}
        return httpx.post(url + path, data=values, files={field: ("upload.bin", audio)}, timeout=60)

    return send


def _json(path: str, field: str, **fields: str) -> Callable[[str, str, bytes], httpx.Response]:
    def send(url: str, voice_id: str, audio: bytes) -> httpx.Response:
        values = {name: value.replace("{id}", voice_id) for name, value in fields.items()}
        return httpx.post(url + path, json={**values, field: _b64(audio)}, timeout=60)

    return send


ROUTES = [
    Route("/clone", "prompt_audio", _form("/clone", "prompt_audio", spk_id="{id}", prompt_text="Hello."), 200, creates_voice=True),
    Route("/upload_audio", "file", _form("/upload_audio", "file"), 200, prompt=False),
    Route("/v1/voices multipart", "audio", _form("/v1/voices", "audio", id="{id}", prompt_text="Hello."), 201, 415, creates_voice=True),
    Route("/v1/voices json", "audio_base64", _json("/v1/voices", "audio_base64", id="{id}", prompt_text="Hello."), 201, 415, creates_voice=True),
    Route("/inference_zero_shot", "prompt_wav", _form("/inference_zero_shot", "prompt_wav", tts_text=TEXT, prompt_text="Hello."), 400),
    Route("/inference_cross_lingual", "prompt_wav", _form("/inference_cross_lingual", "prompt_wav", tts_text=TEXT), 400),
    Route("/inference_instruct2", "prompt_wav", _form("/inference_instruct2", "prompt_wav", tts_text=TEXT, instruct_text="Calmly."), 400),
    Route("/tts/zero_shot", "prompt_audio_base64", _json("/tts/zero_shot", "prompt_audio_base64", tts_text=TEXT, prompt_text="Hello."), 400),
    Route("/tts/cross_lingual", "prompt_audio_base64", _json("/tts/cross_lingual", "prompt_audio_base64", tts_text=TEXT), 400),
    Route("/v1/tts prompt", "prompt_audio_base64", _json("/v1/tts", "prompt_audio_base64", text=TEXT, mode="zero_shot", prompt_text="Hello."), 400, empty_is_absent=True),
    Route("/v1/tts source", "source_audio_base64", _json("/v1/tts", "source_audio_base64", text="", mode="vc"), 400, prompt=False, empty_is_absent=True),
]  # fmt: skip


@pytest.fixture(scope="module")
def uploads(gateway: ServerThread, speech_wav: bytes) -> list[Upload]:
    speech, rate = decode_wav(speech_wav)
    return corpus(speech, rate, max_upload_bytes=gateway.app.state.settings.limits.max_upload_bytes)


def expected(route: Route, upload: Upload) -> tuple[int, tuple[str, ...]]:
    """The status ``route`` should answer ``upload`` with, and what its message must say."""
    verdict = upload.verdict
    accepted = (ACCEPTED_BY_SYNTHESIS,) if route.accepted == 400 else ()
    if verdict is Verdict.PROMPT or (verdict is Verdict.UNFIT and not route.prompt):
        return route.accepted, accepted
    if verdict is Verdict.EMPTY and route.empty_is_absent:
        return route.accepted, accepted
    if verdict is Verdict.TOO_LARGE:
        return 413, ()
    status = route.undecodable if verdict is Verdict.UNDECODABLE else 400
    return status, (route.field, upload.reason)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_upload_route_answers_every_corpus_entry_clearly(
    gateway: ServerThread, uploads: list[Upload], route: Route
) -> None:
    voices_before = set(gateway.app.state.registry.ids())
    wrong = []
    for number, upload in enumerate(uploads):
        voice_id = f"corpus-{number}"
        response = route.send(gateway.url, voice_id, upload.data)
        status, fragments = expected(route, upload)
        message = _message(response)
        if response.status_code != status or not all(part.lower() in message.lower() for part in fragments):
            wrong.append(f"{upload.name}: {response.status_code} {message[:160]!r}, expected {status} with {fragments}")
        if route.creates_voice:
            saved = httpx.get(f"{gateway.url}/v1/voices/{voice_id}")
            if (saved.status_code == 200) != (response.status_code < 300):
                wrong.append(f"{upload.name}: GET of the voice answers {saved.status_code} after {response.status_code}")
            if saved.status_code == 200:
                if abs(saved.json()["duration"] - upload.seconds) > MAX_PADDING_SECONDS:
                    wrong.append(f"{upload.name}: saved {saved.json()['duration']} s of {upload.seconds:.2f} s")
                assert httpx.delete(f"{gateway.url}/v1/voices/{voice_id}").status_code == 204
    assert not wrong, "\n".join(wrong)
    assert_registry_whole(gateway, voices_before)
    assert_still_serving(gateway)


def test_websocket_session_update_refuses_bad_prompts_and_keeps_the_session(
    gateway: ServerThread, uploads: list[Upload]
) -> None:
    url = gateway.url.replace("http", "ws") + "/ws/v1/session"
    wrong = []
    with websockets.sync.client.connect(url, max_size=None) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        for upload in uploads:
            update = json.dumps({"type": "session.update", "mode": "zero_shot", "prompt_text": "Hello.", "prompt_audio_base64": _b64(upload.data)})  # fmt: skip
            socket.send(update)
            reply = _next_reply(socket)
            fragments = _expected_over_websocket(upload, len(update))
            message = reply.get("message", "").lower()
            if reply.get("type") != "error" or not all(part.lower() in message for part in fragments):
                wrong.append(f"{upload.name}: {reply}, expected an error with {fragments}")
        assert not wrong, "\n".join(wrong)
        # The session survived all of it and still speaks with its old voice.
        socket.send(json.dumps({"type": "text", "text": TEXT, "flush": True}))
        pcm = bytearray()
        while True:
            message = socket.recv(timeout=30)
            if isinstance(message, bytes):
                pcm += message
            elif json.loads(message)["type"] == "utterance.done":
                break
    assert len(from_s16le(bytes(pcm))) > 24000 * 0.5
    assert_still_serving(gateway)


def _expected_over_websocket(upload: Upload, message_chars: int) -> tuple[str, ...]:
    if message_chars > MAX_MESSAGE_CHARS:
        return (f"longer than {MAX_MESSAGE_CHARS}",)
    if upload.verdict in (Verdict.PROMPT, Verdict.EMPTY):  # an empty field is no prompt: the mode is refused
        return (ACCEPTED_BY_SYNTHESIS,)
    return ("prompt_audio_base64", upload.reason)


def _next_reply(socket) -> dict:
    """The reply to a session.update: ``session.updated`` or an ``error`` event."""
    while True:
        message = socket.recv(timeout=30)
        if isinstance(message, str) and (event := json.loads(message))["type"] in ("error", "session.updated"):
            return event


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    return detail if isinstance(detail, str) else json.dumps(detail)


def assert_registry_whole(gateway: ServerThread, before: set[str]) -> None:
    """Nothing half-written, nothing added: every voice on disk is complete and loads."""
    registry = gateway.app.state.registry
    root = Path(registry.root)
    assert set(registry.ids()) == before
    assert not [path.name for path in root.iterdir() if path.name.startswith(".tmp")]
    for voice_id in registry.ids():
        assert (root / voice_id / "voice.json").is_file()
        assert registry.info(voice_id).id == voice_id


def assert_still_serving(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/v1/tts", json={"text": "Still here and speaking."}, timeout=30)
    assert response.status_code == 200
    samples, rate = decode_wav(base64.b64decode(response.json()["audio"]))
    assert len(samples) > rate // 2
    assert httpx.get(gateway.url + "/v1/health").status_code == 200
