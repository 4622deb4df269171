"""LiveKit Agents' ElevenLabs and Cartesia plugins against the gateway, unchanged apart from their base URL.

An LLM's reply is pushed token by token into the plugin's stream; the timed transcript LiveKit builds
from our messages is checked against the audio it received; closing the stream mid-reply (an
interruption) frees the engine at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("livekit.plugins.elevenlabs", reason="livekit-plugins-elevenlabs/-cartesia are a test extra")

import aiohttp  # noqa: E402
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT  # noqa: E402
from livekit.plugins import cartesia, elevenlabs  # noqa: E402

from media.pcm import from_s16le  # noqa: E402
from support.servers import ServerThread  # noqa: E402
from tests.agent_checks import assert_engine_free, assert_word_starts_match_audio  # noqa: E402

RATE = 16000
REPLY = "Hello there, thanks for calling. Your order has shipped and it should arrive on Tuesday morning."
LONG_REPLY = " ".join([REPLY] * 6)
TOKEN_GAP_S = 0.02  # an LLM's pace: 50 tokens a second


def _tts(gateway: ServerThread, provider: str, http: aiohttp.ClientSession):
    voice = gateway.engine.capabilities.voices[0]
    if provider == "elevenlabs":
        return elevenlabs.TTS(api_key="unused", voice_id=voice, base_url=gateway.url + "/elevenlabs/v1",
                              http_session=http, encoding=f"pcm_{RATE}")  # fmt: skip
    return cartesia.TTS(api_key="unused", voice=voice, base_url=gateway.url + "/cartesia", http_session=http,
                        sample_rate=RATE)  # fmt: skip


async def _push(stream, text: str) -> None:
    for token in text.split(" "):
        stream.push_text(token + " ")
        await asyncio.sleep(TOKEN_GAP_S)
    stream.flush()
    stream.end_input()


@pytest.mark.parametrize("provider", ["elevenlabs", "cartesia"])
def test_a_streamed_reply_with_a_timed_transcript_that_matches_the_audio(gateway: ServerThread, provider: str) -> None:
    async def main() -> tuple[bytes, list[tuple[str, float, float]]]:
        async with aiohttp.ClientSession() as http:
            tts = _tts(gateway, provider, http)
            stream = tts.stream()
            pushing = asyncio.ensure_future(_push(stream, REPLY))
            audio, words = bytearray(), []
            async for event in stream:
                audio += bytes(event.frame.data)
                for timed in event.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or []:
                    words.append((str(timed), timed.start_time, timed.end_time))
            await pushing
            await stream.aclose()
            await tts.aclose()
            return bytes(audio), words

    audio, words = asyncio.run(asyncio.wait_for(main(), 120))
    samples = from_s16le(audio)
    letters = "".join(c for word, _, _ in words for c in word if c.isalnum())
    assert letters == "".join(c for c in REPLY if c.isalnum())
    assert_word_starts_match_audio(samples, RATE, [(word, start) for word, start, _ in words])
    assert all(start <= end <= len(samples) / RATE + 0.002 for _, start, end in words)
    assert_engine_free(gateway)


@pytest.mark.parametrize("provider", ["elevenlabs", "cartesia"])
def test_closing_the_stream_mid_reply_frees_the_engine(gateway: ServerThread, provider: str) -> None:
    async def main() -> float:
        async with aiohttp.ClientSession() as http:
            tts = _tts(gateway, provider, http)
            stream = tts.stream()
            pushing = asyncio.ensure_future(_push(stream, LONG_REPLY))
            heard = 0
            async for event in stream:
                heard += event.frame.samples_per_channel
                if heard > RATE:  # a second of the reply, then the user speaks
                    break
            pushing.cancel()
            await stream.aclose()
            cut = time.monotonic()
            while gateway.engine.busy:
                await asyncio.sleep(0.02)
                assert time.monotonic() - cut < 5, "the engine went on"
            stopped = time.monotonic() - cut
            await tts.aclose()
            return stopped

    stopped = asyncio.run(asyncio.wait_for(main(), 120))
    # At worst the embedded voice's worker ends the sentence it is computing (up to ~1 s on a shared 2-core CPU);
    # the rest of LONG_REPLY would take several seconds.
    assert stopped < 2.0
    assert_engine_free(gateway)
