"""The CosyVoice engine end to end through the contract, on the tiny v2 model (its audio is noise)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from cosyvoice.engine import Audio, Mode, SavedVoice, SynthesisRequest
from cosyvoice.errors import UnsupportedMode
from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions
from cosyvoice.text import ClauseOptions

RATE = 24000
PROMPT = Audio((0.3 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 180)).astype(np.float32), 16000)
TEXT = "Hello there, this is a test of the tiny model."


@pytest.fixture
async def engine(model_dirs):
    engine = CosyVoiceEngine(
        CosyVoiceOptions(str(model_dirs[2]), device="cpu"), clause_options=ClauseOptions(first_clause_chars=10)
    )
    await engine.start()
    yield engine
    await engine.close()


async def collect(engine, request) -> list[np.ndarray]:
    return [chunk async for chunk in engine.synthesize(request)]


async def test_capabilities_are_the_models(engine):
    caps = engine.capabilities
    assert caps.engine == "cosyvoice" and caps.sample_rate == RATE
    assert caps.modes == {Mode.SFT, Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.INSTRUCT2, Mode.VC}
    assert caps.voices == ("中文女", "英文男") and caps.default_voice == "中文女"


async def test_instruct_is_a_client_error_on_v2(engine):
    with pytest.raises(UnsupportedMode, match="instruct"):
        engine.synthesize(SynthesisRequest(text=TEXT, mode=Mode.INSTRUCT, instruct_text="slowly"))


async def test_streaming_chunks_rates_and_order(engine):
    chunks = await collect(engine, SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=7, stream=True))
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert all(np.abs(c).max() <= 1.0 for c in chunks)
    # first chunk of a clause: 25 tokens = 50 mel frames = 24000 samples, minus 8 frames held for the seam
    assert len(chunks[0]) == 50 * 480 - 8 * 480
    whole = await collect(engine, SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=7, stream=False))
    streamed, single = np.concatenate(chunks), np.concatenate(whole)
    assert len(streamed) == len(single)  # same tokens (same seed), same duration: 2 frames x 480 per token
    assert len(single) % 960 == 0 and len(single) / RATE > 0.5


@pytest.mark.parametrize("generation", [1, 2, 3])
async def test_bfloat16_streams_the_same_tokens_as_it_renders_whole(model_dirs, generation):
    """``dtype = "bfloat16"``: the LLM's weights are stored narrower and the flow runs under autocast;
    a seeded request still gives the same tokens streamed and whole, and finite float32 audio."""
    import torch

    engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[generation]), device="cpu", dtype="bfloat16"))
    await engine.start()
    try:
        assert next(engine.components.llm.parameters()).dtype == torch.bfloat16
        assert next(engine.components.flow.parameters()).dtype == torch.float32
        streamed = await collect(engine, SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=7, stream=True))
        whole = np.concatenate(await collect(engine, SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=7, stream=False)))
        assert len(streamed) >= 2 and all(c.dtype == np.float32 and np.isfinite(c).all() for c in streamed)
        # bfloat16 log-probs depend on the kernels' summation order, and streamed and whole decoding run different
        # shapes: under scalar ATen code (ATEN_CPU_CAPABILITY=default) v1's took one mel frame more (256 samples).
        # At most one token's audio apart (960 samples at v2/v3's 24 kHz, fewer for v1); a broken stream is far off.
        assert abs(len(np.concatenate(streamed)) - len(whole)) <= 960 and np.abs(whole).max() > 0
    finally:
        await engine.close()


@pytest.mark.parametrize("flags,device,expected", [
    ({"avx512f", "avx512_bf16"}, "cpu", "bfloat16"),  # Zen 4, Cooper Lake and later Xeons
    ({"avx512f", "amx_bf16", "amx_tile"}, "cpu", "bfloat16"),  # Sapphire Rapids
    ({"avx2", "avx512f"}, "cpu", "float32"),  # bfloat16 emulated: slower than float32
    (set(), "cpu", "float32"),  # flags unknown (not Linux)
    ({"avx512_bf16"}, "cuda", "float32"),  # a GPU's bfloat16 is not measured yet
])
def test_auto_precision_follows_the_machine(monkeypatch, flags, device, expected):
    import torch

    from cosyvoice.runtime import engine as module

    monkeypatch.setattr(module, "_cpu_flags", lambda: flags)
    assert module.resolve_dtype("auto", device) == getattr(torch, expected)
    assert module.resolve_dtype("float32", device) == torch.float32  # asked for: always that
    assert module.resolve_dtype("bfloat16", device) == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        module.resolve_dtype("float16", device)


async def test_auto_is_the_default_and_resolved_at_load(model_dirs, monkeypatch):
    import torch

    from cosyvoice.runtime import engine as module

    assert CosyVoiceOptions("x").dtype == "auto"
    monkeypatch.setattr(module, "_cpu_flags", lambda: {"avx512_bf16"})
    engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[2]), device="cpu"))
    await engine.start()
    try:
        assert engine.precision == torch.bfloat16
        assert next(engine.components.llm.parameters()).dtype == torch.bfloat16
    finally:
        await engine.close()


async def test_static_kv_cache_gives_the_same_audio(model_dirs):
    """``kv_cache = "static"`` (fixed-shape decode steps) through the engine: a seeded request's
    tokens, and so its audio, are those of the default cache (float32 pinned: the comparison is
    of the caches, not of precisions)."""
    audio = {}
    for kind in ("dynamic", "static"):
        engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[2]), device="cpu", dtype="float32", kv_cache=kind))
        await engine.start()
        try:
            requests = [SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=s, stream=True) for s in (7, 8, 9)]
            results = await asyncio.gather(*(collect(engine, r) for r in requests))  # batched together
            audio[kind] = [np.concatenate(chunks) for chunks in results]
        finally:
            await engine.close()
    # Same tokens, same length; the samples (peaks ~0.13) agree to float32 rounding, not bit for bit,
    # since which sessions' chunks are rendered packed together depends on thread timing (measured
    # 1e-5; another seed's tokens: 0.08).
    for a, b in zip(audio["dynamic"], audio["static"]):
        assert len(a) == len(b) and np.abs(a - b).max() < 1e-4


async def test_seed_reproduces_and_speed_shortens(engine):
    request = SynthesisRequest(text="Same words twice.", mode=Mode.ZERO_SHOT, prompt_audio=PROMPT,
                               prompt_text="a prompt", seed=3, stream=False)
    first = np.concatenate(await collect(engine, request))
    second = np.concatenate(await collect(engine, request))
    assert np.array_equal(first, second)
    fast = np.concatenate(await collect(engine, SynthesisRequest(**{**request.__dict__, "speed": 2.0})))
    assert len(fast) == pytest.approx(len(first) / 2, abs=960 * 2)


async def test_every_cloning_mode(engine):
    for request in (
        SynthesisRequest(text=TEXT, mode=Mode.CROSS_LINGUAL, prompt_audio=PROMPT, seed=1),
        SynthesisRequest(text=TEXT, mode=Mode.INSTRUCT2, prompt_audio=PROMPT, instruct_text="Speak slowly.", seed=1),
        SynthesisRequest(mode=Mode.VC, prompt_audio=PROMPT, source_audio=PROMPT, seed=1),
    ):
        audio = np.concatenate(await collect(engine, request))
        assert len(audio) > RATE * 0.2, request.mode
    vc = np.concatenate(await collect(engine, SynthesisRequest(mode=Mode.VC, prompt_audio=PROMPT, source_audio=PROMPT)))
    assert len(vc) == pytest.approx(PROMPT.duration * RATE, abs=960)  # 25 source tokens/s, 2 frames each


async def test_saved_voice_features_computed_once(engine, monkeypatch):
    stored = []
    voice = SavedVoice(id="bob", prompt_audio=PROMPT, prompt_text="a prompt", store_features=lambda k, v: stored.append(k))
    calls = []
    original = engine.prompt_features
    monkeypatch.setattr(engine, "prompt_features", lambda audio: calls.append(1) or original(audio))
    for _ in range(2):
        await collect(engine, SynthesisRequest(text="Hi there.", mode=Mode.ZERO_SHOT, saved_voice=voice, seed=2))
    assert len(calls) == 1 and stored == [engine.feature_key]
    assert set(voice.features[engine.feature_key]) == {"speech_token", "speech_feat", "embedding"}
    assert engine.feature_key.startswith("cosyvoice-v2.")


async def test_cancel_frees_the_session_at_once(engine):
    scheduler = engine.scheduler
    long_text = " ".join(["This clause keeps the model busy for a while."] * 12)
    stream = engine.synthesize(SynthesisRequest(text=long_text, mode=Mode.SFT, seed=5, stream=True))
    await stream.__anext__()
    assert engine.busy >= 1  # clauses in flight (the next one starts its LLM early)
    stream.cancel()
    deadline = time.monotonic() + 2  # the workers drop it before their next step (a render call may be running)
    while (engine.busy or scheduler.tokens.active) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert engine.busy == 0 and scheduler.tokens.active == 0
    assert not scheduler.tokens.batch.states  # its rows of the batched KV cache are free
    settled = scheduler.stats.tokens
    await asyncio.sleep(0.5)
    assert scheduler.stats.tokens == settled
    assert settled < 12 * 40  # far from the whole text


async def test_event_loop_stays_responsive(engine):
    lags = []

    async def ticker():
        for _ in range(40):
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    tick = asyncio.create_task(ticker())
    await collect(engine, SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=4, stream=True))
    await tick
    assert max(lags) < 0.25


async def test_v1_sft_and_instruct(model_dirs, tmp_path):
    import shutil

    instruct_dir = tmp_path / "CosyVoice-300M-Instruct-tiny"
    shutil.copytree(model_dirs[1], instruct_dir)
    engine = CosyVoiceEngine(CosyVoiceOptions(str(instruct_dir), device="cpu"))
    await engine.start()
    try:
        caps = engine.capabilities
        assert caps.sample_rate == 22050 and Mode.INSTRUCT in caps.modes and Mode.INSTRUCT2 not in caps.modes
        for request in (
            SynthesisRequest(text="Hello there.", mode=Mode.SFT, voice="英文男", seed=1),
            SynthesisRequest(text="Hello there.", mode=Mode.INSTRUCT, voice="英文男", instruct_text="Whisper.", seed=1),
        ):
            chunks = await collect(engine, request)
            audio = np.concatenate(chunks)
            assert len(audio) > 0 and len(audio) % 256 == 0  # whole mel frames of 256 samples
    finally:
        await engine.close()


async def test_v1_streams_in_overlapping_windows(model_dirs):
    engine = CosyVoiceEngine(
        CosyVoiceOptions(str(model_dirs[1]), device="cpu"), clause_options=ClauseOptions(max_chars=1000)
    )
    await engine.start()
    try:
        llm = engine.components.llm
        long_text = " ".join(["this single clause is long enough to give the tiny model many speech tokens"] * 3)
        request = SynthesisRequest(text=long_text, mode=Mode.SFT, seed=11, stream=True)
        chunks = await collect(engine, request)
        whole = np.concatenate(await collect(engine, SynthesisRequest(**{**request.__dict__, "stream": False})))
        streamed = np.concatenate(chunks)
        assert len(chunks) >= 2, "expected at least one 100-token window before the last"
        # the first window: 120 tokens -> 206 frames, minus 34 held for the cross-fade and 20 for the vocoder seam
        assert len(chunks[0]) == (int(120 / 50 * 22050 / 256) - 34 - 20) * 256
        # overlapping windows add no audio: durations agree to within one window's rounding
        assert abs(len(streamed) - len(whole)) <= 3 * 256
        assert llm.speech_token_size == 100
    finally:
        await engine.close()


async def test_saved_voice_in_sft_mode_is_cloned(engine):
    voice = SavedVoice(id="carol", prompt_audio=PROMPT, prompt_text="a prompt")
    silent = SavedVoice(id="dave", prompt_audio=PROMPT, prompt_text="")
    for saved in (voice, silent):
        audio = np.concatenate(await collect(engine, SynthesisRequest(text="Hi there.", voice=saved.id, saved_voice=saved, seed=2)))
        assert len(audio) > 0 and engine.feature_key in saved.features


async def test_start_fails_naming_file_and_key(model_dirs, tmp_path):
    import shutil

    import torch

    from cosyvoice.model.weights import CheckpointError

    broken = tmp_path / "broken"
    shutil.copytree(model_dirs[2], broken)
    state = torch.load(broken / "hift.pt", weights_only=True)
    state["conv_post.weight_v"] = state["conv_post.weight_v"][:, :-1]
    torch.save(state, broken / "hift.pt")
    engine = CosyVoiceEngine(CosyVoiceOptions(str(broken), device="cpu"))
    with pytest.raises(CheckpointError, match=r"hift\.pt: key 'conv_post\.weight_v' has shape"):
        await engine.start()
    assert not engine.ready


async def test_overlong_prompt_is_a_client_error(engine):
    from cosyvoice.errors import InvalidRequest

    long_prompt = Audio(np.zeros(16000 * 31, dtype=np.float32), 16000)
    with pytest.raises(InvalidRequest, match="31.0 s"):
        engine.synthesize(SynthesisRequest(text=TEXT, mode=Mode.CROSS_LINGUAL, prompt_audio=long_prompt))
