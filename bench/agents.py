"""Time to first audio through the voice-agent clients, against our own WebSocket session on the same text.

    .venv/bin/python bench/agents.py [--rounds 10]

Starts one gateway on loopback (embedded voice) and keeps one client of each
kind connected: our ``/ws/v1/session``, pipecat's ``ElevenLabsTTSService`` and
``CartesiaTTSService``, LiveKit Agents' ElevenLabs and Cartesia plugins (each
unchanged apart from its URL). Each round hands the same text to every client
in turn, timing from the hand-over to the first audio frame the client yields,
and waits for the engine to go idle before the next. Prints p50/p95 per client
and each client's p50 minus our session's. On a shared CPU the engine's own time
for the first clause varies by tens of milliseconds from one reply to the next,
so it also prints the p50 of each reply's time to first audio less the engine's
time to its first chunk: what the client and its route add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import websockets  # noqa: E402
from livekit.plugins import cartesia, elevenlabs  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.frames.frames import EndFrame, TTSAudioRawFrame, TTSSpeakFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import PipelineRunner  # noqa: E402
from pipecat.pipeline.task import PipelineParams, PipelineTask  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.cartesia.tts import CartesiaTTSService  # noqa: E402
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService  # noqa: E402

from gateway.settings import Settings  # noqa: E402
from support.servers import ServerThread  # noqa: E402

RATE = 16000
TEXT = "Hello there, thanks for calling. Your order has shipped."
QUIET_S = 0.3  # no audio for this long after the engine went idle: the reply has all arrived

Speak = Callable[[], Awaitable[float]]  # hands TEXT over; returns seconds to the first audio


class EngineWatch:
    """The engine's streams since the last reset, to tell the engine's time from the client's."""

    def __init__(self, gateway: ServerThread) -> None:
        engine = gateway.engine
        self.streams: list = []
        synthesize = engine.synthesize

        def watched(request):
            stream = synthesize(request)
            self.streams.append(stream)
            return stream

        engine.synthesize = watched

    def first_chunk_s(self) -> float:
        """The first stream's time from the engine request to its first chunk reaching the route."""
        return self.streams[0].stats.time_to_first_chunk


class FirstAudio(FrameProcessor):
    """The end of a pipecat pipeline: notes when audio arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()
        self.last_audio = 0.0

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.last_audio = time.perf_counter()
            self.first.set()
        await self.push_frame(frame, direction)


async def _engine_idle(gateway: ServerThread, last_audio: Callable[[], float] = lambda: 0.0) -> None:
    deadline = time.monotonic() + 30
    while gateway.engine.busy or time.perf_counter() - last_audio() < QUIET_S:
        if time.monotonic() > deadline:
            raise TimeoutError("the engine did not go idle")
        await asyncio.sleep(0.02)


async def session_client(gateway: ServerThread, stack: list) -> Speak:
    """Our own session: a flushed text message, then the first binary frame; cancel so the paced rest is skipped."""
    socket = await websockets.connect(
        gateway.url.replace("http", "ws") + f"/ws/v1/session?format=pcm&sample_rate={RATE}"
    )
    stack.append(socket.close)
    assert json.loads(await socket.recv())["type"] == "session.created"

    async def speak() -> float:
        started = time.perf_counter()
        await socket.send(json.dumps({"type": "text", "text": TEXT, "flush": True}))
        while not isinstance(await socket.recv(), bytes):
            pass
        first = time.perf_counter() - started
        await socket.send(json.dumps({"type": "cancel"}))
        while True:
            message = await socket.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "utterance.cancelled":
                break
        await _engine_idle(gateway)
        return first

    return speak


async def pipecat_client(gateway: ServerThread, service, stack: list) -> Speak:
    """A pipecat pipeline kept running; TEXT goes in as a TTSSpeakFrame."""
    sink = FirstAudio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PipelineTask/Runner: still pipecat's documented way
        task = PipelineTask(Pipeline([service, sink]), params=PipelineParams(audio_out_sample_rate=RATE))
        runner = PipelineRunner(handle_sigint=False)
    running = asyncio.ensure_future(runner.run(task))

    async def stop() -> None:
        await task.queue_frame(EndFrame())
        await asyncio.wait_for(running, 15)

    stack.append(stop)

    async def speak() -> float:
        sink.first.clear()
        started = time.perf_counter()
        await task.queue_frame(TTSSpeakFrame(TEXT))
        await asyncio.wait_for(sink.first.wait(), 30)
        first = time.perf_counter() - started
        await _engine_idle(gateway, lambda: sink.last_audio)
        return first

    return speak


async def livekit_client(gateway: ServerThread, tts, stack: list) -> Speak:
    """A LiveKit plugin, prewarmed; each reply is one stream: TEXT pushed, flushed and ended."""
    tts.prewarm()
    stack.append(tts.aclose)

    async def speak() -> float:
        stream = tts.stream()
        started = time.perf_counter()
        stream.push_text(TEXT)
        stream.flush()
        stream.end_input()
        first = None
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - started
        await stream.aclose()
        await _engine_idle(gateway)
        return first

    return speak


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(gateway: ServerThread, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    watch = EngineWatch(gateway)
    voice = gateway.engine.capabilities.voices[0]
    ws_base = gateway.url.replace("http://", "ws://")
    stack: list = []
    async with aiohttp.ClientSession() as http:
        try:
            clients = {
                "our session": await session_client(gateway, stack),
                "pipecat elevenlabs": await pipecat_client(gateway, ElevenLabsTTSService(
                    api_key="unused", url=ws_base + "/elevenlabs", sample_rate=RATE,
                    settings=ElevenLabsTTSService.Settings(voice=voice)), stack),
                "pipecat cartesia": await pipecat_client(gateway, CartesiaTTSService(
                    api_key="unused", url=ws_base + "/cartesia/tts/websocket", sample_rate=RATE,
                    settings=CartesiaTTSService.Settings(voice=voice)), stack),
                "livekit elevenlabs": await livekit_client(gateway, elevenlabs.TTS(
                    api_key="unused", voice_id=voice, base_url=gateway.url + "/elevenlabs/v1", http_session=http,
                    encoding=f"pcm_{RATE}"), stack),
                "livekit cartesia": await livekit_client(gateway, cartesia.TTS(
                    api_key="unused", voice=voice, base_url=gateway.url + "/cartesia", http_session=http,
                    sample_rate=RATE), stack),
            }  # fmt: skip
            await asyncio.sleep(1.0)  # pipelines started, sockets open
            for speak in clients.values():  # warm-up: first connections and first synthesis
                await speak()
            times: dict[str, list[float]] = {name: [] for name in clients}
            added: dict[str, list[float]] = {name: [] for name in clients}
            for round_ in range(rounds):
                for name, speak in clients.items():
                    watch.streams.clear()
                    first = await speak()
                    times[name].append(first)
                    added[name].append(first - watch.first_chunk_s())
                print(f"round {round_ + 1}/{rounds}", flush=True)
            return times, added
        finally:
            for close in reversed(stack):
                await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logger.remove()  # pipecat logs every frame's journey at DEBUG
    logger.add(sys.stderr, level="WARNING")

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.model_validate({"paths": {"data_dir": data_dir, "prompt_dir": data_dir}})
        gateway = ServerThread(settings).start()
        try:
            times, added = asyncio.run(asyncio.wait_for(bench(gateway, args.rounds), 170))
        finally:
            gateway.stop()

    print(f"text: {TEXT!r}, {args.rounds} rounds, time to first audio in ms")
    print(f"{'client':<20} {'p50':>7} {'p95':>7} {'p50 - ours':>11} {'added p50':>10}")
    ours = percentile(times["our session"], 0.5)
    for name, values in times.items():
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        extra = percentile(added[name], 0.5)
        print(f"{name:<20} {p50 * 1000:7.1f} {p95 * 1000:7.1f} {(p50 - ours) * 1000:+11.1f} {extra * 1000:10.1f}")


if __name__ == "__main__":
    main()
