"""Real-time sessions over ``/ws/v1/session``, and the control API that drives them."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import numpy as np
import pytest
import websockets.sync.client

from gateway.settings import Settings
from media.opus import OpusDecoder
from media.pcm import from_s16le
from support.servers import ServerThread
from support.waiting import wait_until
from tests.audio_checks import assert_speech_like

REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."


class Listener:
    """A session client that records audio frames and events with their arrival times."""

    def __init__(self, url: str, query: str = "format=pcm&sample_rate=24000") -> None:
        self._stack = contextlib.ExitStack()
        self.socket = self._stack.enter_context(
            websockets.sync.client.connect(url.replace("http", "ws") + "/ws/v1/session?" + query)
        )
        self.frames: list[tuple[float, bytes]] = []
        self.events: list[tuple[float, dict]] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.created = json.loads(self.socket.recv(timeout=10))
        assert self.created["type"] == "session.created"
        self.session_id = self.created["session"]["session_id"]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.socket:
                now = time.monotonic() - self.started
                with self._lock:
                    if isinstance(message, bytes):
                        self.frames.append((now, message))
                    else:
                        self.events.append((now, json.loads(message)))
        except websockets.exceptions.ConnectionClosed:
            pass

    def send(self, **message) -> None:
        self.socket.send(json.dumps(message))

    def event(self, kind: str, timeout: float = 30, **fields) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for at, event in self.events:
                    if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                        return at, event
            time.sleep(0.01)
        raise TimeoutError(f"no {kind} event {fields}; got {[e['type'] for _, e in self.events]}")

    def audio(self) -> np.ndarray:
        with self._lock:
            return from_s16le(b"".join(data for _, data in self.frames))

    def close(self) -> None:
        self._stack.close()
        self._thread.join(5)


def test_audio_starts_before_the_text_is_complete_and_plays_at_real_time(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    try:
        pieces = REPLY.split(" ")
        for index, word in enumerate(pieces):
            listener.send(type="text", text=word + " ")
            time.sleep(0.08)  # an LLM producing about 12 words a second
            if index == len(pieces) - 1:
                last_piece_at = time.monotonic() - listener.started
        listener.send(type="flush")
        _, first = listener.event("utterance.first_audio")
        assert first["latency_ms"] < 500
        assert listener.frames[0][0] < last_piece_at, "the first audio arrived before the text was complete"
        done_at, done = listener.event("utterance.done", timeout=60)
        assert done["state"] == "done" and done["played_ms"] == done["audio_ms"] > 3000
        audio = listener.audio()
        assert_speech_like(audio, 24000, min_seconds=3.5, max_seconds=12)
        assert {len(data) for _, data in listener.frames} == {960}, "20 ms s16le frames at 24 kHz"
        # Paced: frames arrive spread over (about) the audio's own duration, not in a burst.
        span = listener.frames[-1][0] - listener.frames[0][0]
        duration = len(audio) / 24000
        assert duration - 0.5 < span < duration + 1.0, (span, duration)
        kinds = [event["type"] for _, event in listener.events]
        assert kinds.index("utterance.started") < kinds.index("utterance.first_audio") < kinds.index("utterance.done")
    finally:
        listener.close()


def test_cancel_silences_at_once_and_stops_the_engine(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    pool = gateway.engine.pool
    try:
        listener.send(type="text", text=" ".join([REPLY] * 6), flush=True)
        wait_until(lambda: len(listener.frames) > 25, 20, "half a second of audio")
        listener.send(type="cancel")
        cancelled_at, cancelled = listener.event("utterance.cancelled")
        # Over 25 frames were heard by then, and synthesis runs ahead of playback: some was never heard.
        assert 500 <= cancelled["played_ms"] < cancelled["audio_ms"], cancelled
        listener.event("audio.cleared")
        time.sleep(0.5)
        after = [at for at, _ in listener.frames if at > cancelled_at + 0.15]
        assert not after, f"{len(after)} frames after the cancel"
        wait_until(lambda: pool.busy == 0, 2, "engine workers idle after cancel")
        # The session keeps working after a barge-in.
        listener.send(type="text", text="Sorry, go ahead.", flush=True)
        listener.event("utterance.done", timeout=30, utterance_id="u2")
    finally:
        listener.close()


def test_marks_and_playback_events(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    try:
        listener.send(type="text", text="First part of the answer.")
        listener.send(type="mark", name="after-first")
        listener.send(type="text", text="And the second part.", flush=True)
        mark_at, mark = listener.event("mark", name="after-first")
        done_at, _ = listener.event("utterance.done")
        assert mark["played_ms"] > 800 and mark_at < done_at
    finally:
        listener.close()


def test_bad_messages_are_errors_not_disconnects(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    try:
        listener.socket.send("not json")
        listener.event("error")
        listener.send(type="dance")
        listener.event("error", request_type="dance")
        listener.send(type="session.update", voice="nobody")
        listener.event("error", request_type="session.update")
        listener.send(type="ping", id=7)
        listener.event("pong", id=7)
        listener.socket.send(b"\x00\x01" * 160)  # caller audio is accepted and drained
        listener.send(type="text", text="Still talking.", flush=True)
        listener.event("utterance.done")
    finally:
        listener.close()


def test_text_in_the_opening_starts_an_utterance_the_client_sees(gateway: ServerThread) -> None:
    listener = Listener(gateway.url, "format=pcm&sample_rate=24000&text=Words%20from%20the%20query.")
    try:
        listener.event("utterance.done")
        kinds = [event["type"] for _, event in listener.events]
        assert kinds.index("utterance.started") < kinds.index("utterance.first_audio") < kinds.index("utterance.done")
        assert listener.event("utterance.started")[1]["utterance_id"] == "u1"
    finally:
        listener.close()


def test_direct_replies_carry_the_session_and_time_and_created_names_the_default_voice(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    try:
        session = listener.created["session"]
        assert session["voice"] == gateway.engine.capabilities.default_voice == "joe", "the voice it will speak in, not null"
        listener.send(type="text", text="A reply, ")
        listener.send(type="flush")
        listener.send(type="ping", id=3)
        listener.send(type="session.update", speed=1.1)
        listener.socket.send("not json")
        replies = [listener.event(kind)[1] for kind in ("text.accepted", "flushed", "pong", "session.updated", "error")]
        for message in [listener.created, *replies]:
            assert message["session_id"] == listener.session_id, message
            assert abs(message["time"] - time.time()) < 30, message  # Unix seconds: generous for a loaded CI machine
        assert replies[3]["session"]["voice"] == "joe"
    finally:
        listener.close()


@pytest.mark.parametrize("query", ["format=mp3", "sample_rate=12345", "voice=nobody", "mode=vc"])
def test_bad_session_parameters_close_with_a_reason(gateway: ServerThread, query: str) -> None:
    url = gateway.url.replace("http", "ws") + "/ws/v1/session?" + query
    with websockets.sync.client.connect(url) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "error"
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 1008


def test_opus_frames_decode_to_speech(gateway: ServerThread) -> None:
    listener = Listener(gateway.url, "format=opus")
    try:
        assert listener.created["audio"] == {"format": "opus", "sample_rate": 48000, "channels": 1, "frame_ms": 20}
        listener.send(type="text", text="Opus packets, one per message.", flush=True)
        listener.event("utterance.done")
        decoder = OpusDecoder()
        pcm = np.concatenate([decoder.decode(data) for _, data in listener.frames])
        assert len(pcm) == 960 * len(listener.frames)
        assert_speech_like(pcm, 48000, min_seconds=1.5, max_seconds=5)
    finally:
        listener.close()


def test_control_api_drives_a_session(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    sid = listener.session_id
    try:
        assert sid in {s["session_id"] for s in httpx.get(gateway.url + "/v1/sessions").json()["sessions"]}
        events: list[dict] = []
        subscribed = threading.Event()

        def follow() -> None:
            with httpx.stream("GET", f"{gateway.url}/v1/sessions/{sid}/events", timeout=30) as response:
                for line in response.iter_lines():
                    if line == ": connected":
                        subscribed.set()
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if events[-1]["type"] == "utterance.done":
                            return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert subscribed.wait(10), "the event stream is subscribed before the session speaks"
        said = httpx.post(f"{gateway.url}/v1/sessions/{sid}/say", json={"text": "A bot speaks through the API.", "flush": True})
        assert said.status_code == 200 and said.json()["utterance_id"] == "u1"
        listener.event("utterance.done")
        follower.join(10)
        assert [e["type"] for e in events][:2] == ["utterance.started", "utterance.first_audio"]
        assert events[-1]["type"] == "utterance.done"
        assert_speech_like(listener.audio(), 24000, min_seconds=1.2, max_seconds=5)
        described = httpx.get(f"{gateway.url}/v1/sessions/{sid}").json()
        assert described["utterances"][0]["state"] == "done"
        assert httpx.post(f"{gateway.url}/v1/sessions/nope/say", json={"text": "x"}).status_code == 404
        assert httpx.delete(f"{gateway.url}/v1/sessions/{sid}").status_code == 204
        listener.event("session.closed")
    finally:
        listener.close()


def test_a_vanished_client_frees_its_session_and_engine_work(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    sid = listener.session_id
    listener.send(type="text", text=" ".join([REPLY] * 6), flush=True)
    wait_until(lambda: len(listener.frames) > 5, 20, "audio flowing")
    listener.socket.close()
    wait_until(lambda: gateway.app.state.sessions.get(sid) is None, 5, "session removed")
    wait_until(lambda: gateway.engine.pool.busy == 0, 2, "engine idle")


def test_idle_sessions_time_out(tmp_path) -> None:
    settings = Settings.model_validate(
        {"paths": {"data_dir": str(tmp_path)}, "session": {"idle_timeout": 0.5}, "embedded": {"workers": 1}}
    )
    server = ServerThread(settings).start()
    try:
        listener = Listener(server.url)
        listener.event("session.closed", timeout=5, reason="idle timeout")
        wait_until(lambda: not server.app.state.sessions.list(), 5, "no sessions left")
        listener.close()
    finally:
        server.stop()
