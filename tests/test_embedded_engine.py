"""The embedded Piper voice in worker processes, driven directly through the engine contract."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from cosyvoice import EngineFailure, InvalidRequest, Mode, SynthesisRequest, UnknownVoice, UnsupportedMode
from cosyvoice.embedded import EmbeddedEngine, EmbeddedOptions
from tests.audio_checks import assert_speech_like


@pytest.fixture
async def engine():
    engine = EmbeddedEngine(EmbeddedOptions(workers=2))
    await engine.start()
    yield engine
    await engine.close()


async def render(engine: EmbeddedEngine, text: str, **fields) -> np.ndarray:
    async with engine.synthesize(SynthesisRequest(text=text, **fields)) as stream:
        return np.concatenate([chunk async for chunk in stream])


async def test_capabilities_before_and_after_start() -> None:
    engine = EmbeddedEngine(EmbeddedOptions(workers=1))
    caps = engine.capabilities
    assert caps.modes == {Mode.SFT} and caps.sample_rate == 22050 and caps.voices == ("joe",)
    assert not engine.ready
    await engine.start()
    try:
        assert engine.ready and await engine.probe()
    finally:
        await engine.close()
    assert not engine.ready


async def test_speaks_clause_by_clause(engine: EmbeddedEngine) -> None:
    text = "Good morning, everyone. This voice runs in separate worker processes."
    async with engine.synthesize(SynthesisRequest(text=text)) as stream:
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 3  # "Good morning,", "everyone.", "This voice ..."
    assert all(chunk.dtype == np.float32 for chunk in chunks)
    assert_speech_like(np.concatenate(chunks), 22050, min_seconds=2.5, max_seconds=8)


async def test_the_gateway_process_never_imports_piper(engine: EmbeddedEngine) -> None:
    import sys

    await render(engine, "Licence check.")
    assert "piper" not in sys.modules
    assert engine.pool.pids and os.getpid() not in engine.pool.pids


async def test_modes_it_cannot_do_name_the_mode_and_engine(engine: EmbeddedEngine) -> None:
    for mode in (Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.INSTRUCT, Mode.INSTRUCT2, Mode.VC):
        with pytest.raises(UnsupportedMode, match=f"mode '{mode.value}' is not supported by engine 'embedded'"):
            engine.synthesize(SynthesisRequest(text="hi", mode=mode))
    with pytest.raises(UnknownVoice):
        engine.synthesize(SynthesisRequest(text="hi", voice="nobody"))
    with pytest.raises(InvalidRequest, match="speed"):
        engine.synthesize(SynthesisRequest(text="hi", speed=10))


async def test_cancel_frees_the_workers_within_a_clause(engine: EmbeddedEngine) -> None:
    text = " ".join(f"Sentence number {n} keeps the worker busy for a while." for n in range(30))
    stream = engine.synthesize(SynthesisRequest(text=text))
    await stream.__anext__()
    stream.cancel()
    cancelled = time.monotonic()
    while engine.pool.busy:
        await asyncio.sleep(0.01)
    assert time.monotonic() - cancelled < 1.0


async def test_a_crashed_worker_is_replaced(engine: EmbeddedEngine) -> None:
    old = set(engine.pool.pids)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while engine.pool.alive < 2 or engine.pool.busy or set(engine.pool.pids) & old:
        assert time.monotonic() < deadline, "workers were not replaced"
        await asyncio.sleep(0.1)
    assert_speech_like(await render(engine, "Back in business, all good."), 22050, min_seconds=0.8, max_seconds=4)


async def test_streams_survive_workers_dying_between_clauses(engine: EmbeddedEngine) -> None:
    text = " ".join(f"Sentence number {n} is spoken after a crash." for n in range(6))
    survivor = engine.synthesize(SynthesisRequest(text=text))
    first = await survivor.__anext__()
    for pid in engine.pool.pids:
        os.kill(pid, signal.SIGKILL)
    rest = [chunk async for chunk in survivor]
    assert len(rest) == 5, "every later clause is retried on a replacement worker"
    assert_speech_like(np.concatenate([first, *rest]), 22050, min_seconds=6, max_seconds=20)
    assert_speech_like(await render(engine, "The next caller is fine."), 22050, min_seconds=0.8, max_seconds=4)
