"""pipecat's own ElevenLabsTTSService and CartesiaTTSService against the gateway, unchanged apart from their URL.

An LLM's reply goes in token by token; the word timestamps pipecat derives from our messages (with its
own alignment arithmetic) are checked against the audio it received; an interruption mid-reply frees
the engine at once, and the same service then speaks the next reply.
"""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest

pytest.importorskip("pipecat.services.elevenlabs.tts", reason="pipecat-ai[elevenlabs,cartesia] is a test extra")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import PipelineRunner  # noqa: E402
from pipecat.pipeline.task import PipelineParams, PipelineTask  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.cartesia.tts import CartesiaTTSService  # noqa: E402
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService  # noqa: E402

from media.pcm import from_s16le  # noqa: E402
from support.servers import ServerThread  # noqa: E402
from tests.agent_checks import assert_engine_free, assert_word_starts_match_audio  # noqa: E402

RATE = 16000
REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."
LONG_REPLY = " ".join([REPLY] * 6)
TOKEN_GAP_S = 0.02  # an LLM's pace: 50 tokens a second


class Sink(FrameProcessor):
    """The end of the pipeline: what the transport would play."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()
        self.errors: list[str] = []

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio += frame.audio
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


def _recording(service_class: type) -> type:
    """The service as is, noting the (word, start) pairs it derived from our messages."""

    class Recording(service_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.word_times: list[tuple[str, float]] = []

        async def add_word_timestamps(self, word_times, context_id=None, *args, **kwargs):
            self.word_times += list(word_times)
            await super().add_word_timestamps(word_times, context_id, *args, **kwargs)

    return Recording


def _services(gateway: ServerThread) -> dict[str, object]:
    base = gateway.url.replace("http://", "ws://")
    voice = gateway.engine.capabilities.voices[0]
    return {
        "elevenlabs": lambda: _recording(ElevenLabsTTSService)(
            api_key="unused", url=base + "/elevenlabs", sample_rate=RATE,
            settings=ElevenLabsTTSService.Settings(voice=voice),
        ),
        "cartesia": lambda: _recording(CartesiaTTSService)(
            api_key="unused", url=base + "/cartesia/tts/websocket", sample_rate=RATE,
            settings=CartesiaTTSService.Settings(voice=voice),
        ),  # fmt: skip
    }


async def _speak(task: PipelineTask, text: str) -> None:
    await task.queue_frame(LLMFullResponseStartFrame())
    for token in text.split(" "):
        await task.queue_frame(LLMTextFrame(token + " "))
        await asyncio.sleep(TOKEN_GAP_S)
    await task.queue_frame(LLMFullResponseEndFrame())


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _letters(text: str) -> str:
    return "".join(c for c in text if c.isalnum())


def _run(service, script) -> Sink:
    sink = Sink()

    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # PipelineTask/Runner: still pipecat's documented way
            task = PipelineTask(Pipeline([service, sink]), params=PipelineParams(audio_out_sample_rate=RATE))
            runner = PipelineRunner(handle_sigint=False)

        async def drive() -> None:
            try:
                await script(task, sink)
            finally:
                await task.queue_frame(EndFrame())

        await asyncio.wait_for(asyncio.gather(runner.run(task), drive()), 120)

    asyncio.run(main())
    return sink


@pytest.mark.parametrize("provider", ["elevenlabs", "cartesia"])
def test_a_streamed_reply_with_word_timestamps_that_match_the_audio(gateway: ServerThread, provider: str) -> None:
    service = _services(gateway)[provider]()
    spoken_words = len(REPLY.split())

    async def script(task: PipelineTask, sink: Sink) -> None:
        await _speak(task, REPLY)
        # pipecat joins a sentence's last word to the next one's first (it sends sentences without the space between),
        # and times a last word with no space after it only at the end (ElevenLabs)
        await _until(lambda: len(service.word_times) >= spoken_words - 2, 60, "every word's timing")
        await _until(lambda: gateway.engine.busy == 0, 30, "the end of the reply")
        await asyncio.sleep(0.3)  # its last messages on the way

    sink = _run(service, script)
    assert not sink.errors
    samples = from_s16le(bytes(sink.audio))
    timed = _letters("".join(word for word, _ in service.word_times))
    assert _letters(REPLY).startswith(timed) and len(timed) >= len(_letters(REPLY)) - len("morning")
    assert_word_starts_match_audio(samples, RATE, service.word_times)
    assert_engine_free(gateway)


@pytest.mark.parametrize("provider", ["elevenlabs", "cartesia"])
def test_an_interruption_mid_reply_frees_the_engine_and_the_next_reply_is_spoken(gateway: ServerThread, provider: str):
    service = _services(gateway)[provider]()
    heard = {}

    async def script(task: PipelineTask, sink: Sink) -> None:
        speaking = asyncio.ensure_future(_speak(task, LONG_REPLY))
        await _until(lambda: len(sink.audio) > RATE * 2, 60, "a second of audio")  # s16: 2 bytes a sample
        speaking.cancel()
        await task.queue_frame(InterruptionFrame())
        cut = time.monotonic()
        await _until(lambda: gateway.engine.busy == 0, 5, "the engine to stop")
        heard["stop_s"] = time.monotonic() - cut
        heard["bytes"] = len(sink.audio)
        await _speak(task, REPLY)
        await _until(lambda: len(sink.audio) > heard["bytes"] + RATE * 4, 60, "the next reply's audio")

    sink = _run(service, script)
    assert not sink.errors
    # The engine stops at the cut, at worst once the embedded voice's worker ends the sentence it is computing
    # (a sentence of REPLY: up to ~1 s on a shared 2-core CPU); the rest of LONG_REPLY would take several seconds.
    assert heard["stop_s"] < 2.0
    assert_engine_free(gateway)
