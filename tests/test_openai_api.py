"""The OpenAI speech API, driven by the official ``openai`` SDK."""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest

from media.pcm import from_s16le
from support.servers import ServerThread
from tests.audio_checks import assert_speech_like, decode_container, plausible_seconds

TEXT = "The official client library talks to this server without changes."


@pytest.fixture(scope="module")
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


@pytest.mark.parametrize("fmt,container", [("mp3", "mp3"), ("opus", "ogg"), ("aac", "aac"), ("flac", "flac"), ("wav", "wav")])
def test_every_format_decodes_to_speech_at_24k(client: openai.OpenAI, fmt: str, container: str) -> None:
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    samples, rate = decode_container(audio.content, container)
    expected_rate = 48000 if fmt == "opus" else 24000  # Ogg/Opus always decodes at 48 kHz
    assert rate == expected_rate
    low, high = plausible_seconds(TEXT)
    assert_speech_like(samples, rate, min_seconds=low, max_seconds=high + 0.3)


def test_pcm_is_24k_s16le(client: openai.OpenAI) -> None:
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input=TEXT, response_format="pcm")
    low, high = plausible_seconds(TEXT)
    assert_speech_like(from_s16le(audio.content), 24000, min_seconds=low, max_seconds=high)


def test_streaming_response_arrives_in_pieces(client: openai.OpenAI) -> None:
    long_text = " ".join([TEXT] * 4)
    arrivals = []
    started = time.monotonic()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="onyx", input=long_text, response_format="pcm"
    ) as response:
        pcm = bytearray()
        for chunk in response.iter_bytes(4096):
            arrivals.append(time.monotonic() - started)
            pcm += chunk
    assert arrivals[0] < arrivals[-1] / 2, "the first audio came long before the last"
    low, high = plausible_seconds(long_text)
    assert_speech_like(from_s16le(bytes(pcm)), 24000, min_seconds=low, max_seconds=high)


def test_speed_is_applied(client: openai.OpenAI) -> None:
    def seconds(speed: float) -> float:  # three takes: the voice's phoneme durations are drawn at random
        return sum(
            len(client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=speed).content)
            for _ in range(3)
        ) / 48000

    # Piper rounds each phoneme's frames up, so twice the speed takes ~0.63 of the time, not 0.5
    assert 0.35 < seconds(2.0) / seconds(1.0) < 0.7


def test_sse_events(gateway: ServerThread) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    events = []
    with httpx.stream("POST", gateway.url + "/v1/audio/speech", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_speech_like(from_s16le(pcm), 24000, min_seconds=1.5, max_seconds=8)


def test_voice_as_object_and_our_own_ids(client: openai.OpenAI) -> None:
    by_object = client.audio.speech.create(model="tts-1", voice={"id": "joe"}, input="Hi there.", response_format="wav")
    by_name = client.audio.speech.create(model="tts-1", voice="joe", input="Hi there.", response_format="wav")
    assert decode_container(by_object.content, "wav")[1] == decode_container(by_name.content, "wav")[1] == 24000


@pytest.mark.parametrize(
    "fields,error,param",
    [
        ({"voice": "nobody"}, openai.BadRequestError, "voice"),
        ({"model": "tts-9"}, openai.NotFoundError, "model"),
        ({"input": "x" * 4097}, openai.BadRequestError, "input"),
        ({"input": ""}, openai.BadRequestError, None),
        ({"speed": 4.5}, openai.BadRequestError, "speed"),
        ({"response_format": "ogg"}, openai.BadRequestError, "response_format"),
    ],
)
def test_errors_use_the_openai_envelope(client: openai.OpenAI, fields: dict, error: type, param: str | None) -> None:
    request = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    with pytest.raises(error) as raised:
        client.audio.speech.create(**request)
    body = raised.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["message"]
    assert body["param"] == param


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_instructions_are_a_hint_the_embedded_voice_ignores(client: openai.OpenAI, stream_format: str) -> None:
    """LiveKit's and pipecat's examples send instructions; an engine without instruct modes still speaks."""
    response = client.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=TEXT, instructions="Speak like a pirate.",
        response_format="pcm", stream_format=stream_format,
    )  # fmt: skip
    assert response.status_code == 200
    assert "has no instruct mode" in response.headers["x-instructions-ignored"]
    plain = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm")
    assert "x-instructions-ignored" not in plain.headers


def test_every_answer_has_a_request_id(gateway: ServerThread, client: openai.OpenAI) -> None:
    speech = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm")
    generated = speech.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0, "a fresh id when the client sends none"
    with pytest.raises(openai.NotFoundError) as raised:
        client.audio.speech.create(model="tts-9", voice="alloy", input="Hi.", extra_headers={"X-Request-Id": "trace-42"})
    assert raised.value.response.headers["x-request-id"] == "trace-42", "the client's own id is echoed on errors"
    assert raised.value.request_id == "trace-42", "where the SDK looks for it"


def test_models_and_voices(gateway: ServerThread, client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    voices = httpx.get(gateway.url + "/v1/audio/voices").json()
    assert "joe" in voices["voices"]
    assert voices["openai_voices"]["alloy"] == "joe"  # no English built-ins on the embedded voice: the default


def test_output_is_not_clipped_by_resampling(client: openai.OpenAI) -> None:
    samples = from_s16le(client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm").content)
    assert np.abs(samples).max() < 0.999
