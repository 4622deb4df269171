"""Hostile clients: nothing one connection does holds capacity, CPU or sockets without bound.

The replay engine stands in for a model here: it makes audio as fast as it
is read, so a reader's speed alone decides how long a synthesis lasts, and
``chars_per_second`` makes a runaway stream (far more audio than its text).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from cosyvoice import SynthesisRequest
from cosyvoice.replay import ReplayEngine
from gateway.budget import FLOOR_SECONDS, audio_budget, expected_seconds
from gateway.settings import Settings
from support.servers import ServerProcess, ServerThread

RATE = 16000
LONG = " ".join(f"Sentence number {n} keeps this synthesis going for a while." for n in range(50))


def recording(path: Path) -> Path:
    """Two seconds of a tone as 16-bit mono WAV, what the replay engine serves."""
    tone = (np.sin(np.arange(2 * RATE) * 2 * np.pi * 220 / RATE) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(tone.tobytes())
    return path


def replay_server(tmp_path: Path, *, chars_per_second: float = 14.0, **limits) -> ServerThread:
    settings = Settings.model_validate({"paths": {"data_dir": str(tmp_path / "data")}, "limits": limits})
    engine = ReplayEngine(recording(tmp_path / "tone.wav"), chars_per_second=chars_per_second)
    return ServerThread(settings, engine=engine).start()


@pytest.fixture()
def quick_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timeouts of a second, so each test takes seconds (the defaults are 10 s)."""
    for name in ("gateway.streaming.SEND_TIMEOUT", "gateway.routes.unified.SEND_TIMEOUT", "gateway.routes.unified.CONFIG_TIMEOUT"):
        monkeypatch.setattr(name, 1.0, raising=False)


def stalled_request(port: int, text: str) -> socket.socket:
    """A /v1/tts/stream request from a client that never reads its answer."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    body = json.dumps({"text": text}).encode()
    client.sendall(
        b"POST /v1/tts/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return client


def test_a_client_that_stops_reading_loses_its_synthesis_slot(tmp_path: Path, quick_timeouts: None) -> None:
    busy = replay_server(tmp_path, max_syntheses=1, queue_timeout=8.0)
    stalled = [stalled_request(busy.port, LONG)]  # ~230 s of audio, 7 MB: far more than the socket buffers
    try:
        started = time.monotonic()
        response = httpx.post(busy.url + "/v1/tts", json={"text": "Next in line."}, timeout=30)
        waited = time.monotonic() - started
        # Before the send timeout the stalled stream held the only slot for request_timeout (300 s):
        # this request got a 503 after queue_timeout (8 s).
        assert response.status_code == 200, response.text[:200]
        assert waited < 6, f"the next request waited {waited:.1f} s for the slot"
        stalled.append(stalled_request(busy.port, LONG))
        ws_url = busy.url.replace("http", "ws") + "/ws/v1/tts"

        async def stalled_websocket() -> None:
            async with websockets.connect(ws_url, max_queue=1, read_limit=1024) as ws:
                await ws.send(json.dumps({"text": LONG}))
                await asyncio.sleep(8)

        async def next_in_line() -> int:
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(timeout=30) as client:
                return (await client.post(busy.url + "/v1/tts", json={"text": "And the next."})).status_code

        async def both() -> int:
            holder = asyncio.ensure_future(stalled_websocket())
            try:
                return await next_in_line()
            finally:
                holder.cancel()

        assert asyncio.run(both()) == 200, "a /ws/v1/tts client that stops reading gives up its slot too"
    finally:
        for client in stalled:
            client.close()
        busy.stop()


def test_audio_is_bounded_by_what_the_text_takes_to_say(tmp_path: Path) -> None:
    # A runaway engine: two seconds of audio per character, 30 s for "Hello there."
    runaway = replay_server(tmp_path, chars_per_second=0.5)
    try:
        started = time.monotonic()
        whole = httpx.post(runaway.url + "/v1/tts", json={"text": "Hello there."}, timeout=60)
        assert whole.status_code == 500 and "far longer than its text" in whole.json()["detail"], whole.text[:200]
        streamed = b""
        with pytest.raises(httpx.RemoteProtocolError):  # cut off: an error, not an ending
            with httpx.stream("POST", runaway.url + "/v1/tts/stream", json={"text": "Hello there."}, timeout=60) as response:
                for chunk in response.iter_bytes():
                    streamed += chunk
        # The 10 s floor, give or take the replay engine's 0.2 s chunks.
        assert FLOOR_SECONDS - 0.5 <= len(streamed) / 2 / RATE <= FLOOR_SECONDS, len(streamed)
        assert time.monotonic() - started < 20
    finally:
        runaway.stop()


def test_the_audio_budget_follows_the_text() -> None:
    sentence = "The quick brown fox jumps over the lazy dog, twice a day."
    assert 3 < expected_seconds(sentence) < 5
    assert expected_seconds("你好，今天天气很好。") > 2.5, "a Chinese character is a syllable"
    assert audio_budget(SynthesisRequest(text="Hi.")) == FLOOR_SECONDS
    long_text = sentence * 20  # ~80 s of speech
    assert audio_budget(SynthesisRequest(text=long_text)) == pytest.approx(3 * expected_seconds(long_text))
    assert audio_budget(SynthesisRequest(text=long_text, speed=0.5)) == pytest.approx(6 * expected_seconds(long_text))


def test_a_tts_websocket_that_never_configures_is_closed(tmp_path: Path, quick_timeouts: None) -> None:
    server = replay_server(tmp_path)
    try:

        async def idle() -> tuple[dict, int]:
            async with websockets.connect(server.url.replace("http", "ws") + "/ws/v1/tts") as ws:
                async with asyncio.timeout(5):
                    message = json.loads(await ws.recv())
                    await ws.wait_closed()
                return message, ws.close_code

        message, code = asyncio.run(idle())
        assert message["done"] and "no config" in message["error"] and code == 1008
    finally:
        server.stop()


def test_connections_that_never_send_a_request_are_closed(tmp_path: Path) -> None:
    """Slowloris: a request head dribbled a byte at a time, or nothing at all, gets the socket closed;
    and past max_connections new requests get a 503 instead of piling up."""
    env = {
        "GATEWAY_ENGINE_REPLAY_AUDIO": str(recording(tmp_path / "tone.wav")),
        "GATEWAY_PATHS_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_SERVER_REQUEST_HEAD_TIMEOUT": "1",
        "GATEWAY_SERVER_MAX_CONNECTIONS": "4",
    }
    server = ServerProcess(env=env)
    try:
        server.wait_listening()
        silent = socket.create_connection(("127.0.0.1", server.port))
        dribbler = socket.create_connection(("127.0.0.1", server.port))
        dribbler.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        crowd = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        time.sleep(0.2)
        assert httpx.get(server.url + "/", timeout=5).status_code == 503, "four connections open: the fifth is refused"
        started = time.monotonic()
        closed = None
        while time.monotonic() - started < 5:
            try:
                dribbler.sendall(b"X")  # one more header byte every 0.2 s
            except OSError:
                closed = time.monotonic() - started
                break
            dribbler.settimeout(0.2)
            try:
                if dribbler.recv(1024) == b"":
                    closed = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        assert closed is not None and closed < 2, "a request head that never ends is cut off after request_head_timeout"
        silent.settimeout(2)
        assert silent.recv(1024) == b"", "a connection that sends nothing is closed too"
        assert httpx.get(server.url + "/", timeout=5).status_code == 200, "the crowd is gone: requests are served again"
        for client in (silent, dribbler, *crowd):
            client.close()
    finally:
        server.stop()


def test_spk2info_import_is_all_or_nothing_and_bounded(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import io

    server = replay_server(tmp_path)

    def upload(entries: dict, **form) -> httpx.Response:
        buffer = io.BytesIO()
        torch.save(entries, buffer)
        return httpx.post(server.url + "/v1/voices/import", files={"file": ("spk2info.pt", buffer.getvalue())}, data=form, timeout=60)

    def voices() -> set[str]:
        return set(server.app.state.registry.ids())

    good = {"embedding": torch.randn(1, 192)}
    try:
        assert upload({"kept": good}).status_code == 200
        cases = {
            "a bad id after a good one": ({"fine-1": good, "../escape": good}, 400),
            "an existing voice after a new one": ({"fine-2": good, "kept": good}, 409),
            "a speaker without tensors": ({"fine-3": good, "hollow": {}}, 400),
            "a value that is not a tensor": ({"fine-4": good, "texty": {"embedding": "not a tensor"}}, 400),
            "an odd tensor name": ({"fine-5": good, "odd": {"../../escape": torch.zeros(4)}}, 400),
            "a speaker id that is not a string": ({"fine-6": good, 7: good}, 400),
            "too many speakers": ({f"many-{n}": good for n in range(257)}, 400),
        }
        for case, (entries, status) in cases.items():
            response = upload(entries)
            assert response.status_code == status, f"{case}: {response.status_code} {response.text[:200]}"
            assert voices() == {"kept"}, f"{case}: nothing of it is saved"
        replaced = upload({"kept": {"embedding": torch.zeros(1, 192)}, "fresh": good}, replace="true")
        assert replaced.status_code == 200 and voices() == {"kept", "fresh"}
    finally:
        server.stop()


def test_event_watchers_per_session_are_capped(tmp_path: Path) -> None:
    from gateway.routes.sessions import MAX_WATCHERS

    server = replay_server(tmp_path)
    ws_base = server.url.replace("http", "ws")

    async def crowd() -> tuple[int, int | None, int]:
        async with websockets.connect(ws_base + "/ws/v1/session") as session_socket:
            session_id = json.loads(await session_socket.recv())["session"]["session_id"]
            events_url = f"{server.url}/v1/sessions/{session_id}/events"
            async with httpx.AsyncClient(timeout=10) as client:
                watchers = []
                for _ in range(MAX_WATCHERS):
                    watcher = await client.send(client.build_request("GET", events_url), stream=True)
                    assert watcher.status_code == 200
                    watchers.append(watcher)
                refused = (await client.get(events_url)).status_code
                async with websockets.connect(f"{ws_base}/v1/sessions/{session_id}/events") as late:
                    with pytest.raises(websockets.ConnectionClosed):
                        await asyncio.wait_for(late.recv(), 5)
                    late_code = late.close_code
                await watchers.pop().aclose()
                await asyncio.sleep(0.2)
                async with client.stream("GET", events_url) as again:
                    freed = again.status_code
                for watcher in watchers:
                    await watcher.aclose()
        return refused, late_code, freed

    try:
        refused, late_code, freed = asyncio.run(crowd())
        assert refused == 429 and late_code == 1013, "a session's watchers are capped"
        assert freed == 200, "a watcher that leaves makes room"
    finally:
        server.stop()


def test_event_watchers_that_leave_a_quiet_session_free_their_places(tmp_path: Path) -> None:
    """No event comes to find a closed watcher gone: reading its socket does, so a full session has room again."""
    from gateway.routes.sessions import MAX_WATCHERS

    server = replay_server(tmp_path)
    ws_base = server.url.replace("http", "ws")

    async def come_and_go() -> None:
        async with websockets.connect(ws_base + "/ws/v1/session") as session_socket:
            session_id = json.loads(await session_socket.recv())["session"]["session_id"]
            events_url = f"{ws_base}/v1/sessions/{session_id}/events"
            for _ in range(3):  # each round fills every place and leaves; nothing is said meanwhile
                watchers = [await websockets.connect(events_url) for _ in range(MAX_WATCHERS)]
                for watcher in watchers:
                    await watcher.close()
                session = server.app.state.sessions.get(session_id)
                deadline = asyncio.get_running_loop().time() + 2
                while session.events.watchers:
                    assert asyncio.get_running_loop().time() < deadline, "closed watchers still hold their places"
                    await asyncio.sleep(0.05)

    try:
        asyncio.run(come_and_go())
    finally:
        server.stop()
