"""CosyVoice's word timings: estimated from each clause's speech tokens, shared out by the words' text tokens."""

from __future__ import annotations

import pytest

from cosyvoice.engine import Mode, SynthesisRequest
from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions
from cosyvoice.text import ClauseOptions
from cosyvoice.timing import TimingSource, word_spans

TEXT = "Hello there, this is a test of the tiny model. It speaks two sentences."


@pytest.mark.parametrize("generation,stream,speed", [(2, True, 1.0), (2, False, 1.5), (1, True, 1.0), (3, True, 1.0)])
async def test_timings_are_estimated_ordered_and_cover_the_audio(model_dirs, generation, stream, speed) -> None:
    options = CosyVoiceOptions(str(model_dirs[generation]), device="cpu")
    engine = CosyVoiceEngine(options, clause_options=ClauseOptions(first_clause_chars=10))
    await engine.start()
    try:
        request = SynthesisRequest(text=TEXT, mode=Mode.SFT, seed=3, stream=stream, speed=speed)
        async with engine.synthesize(request) as stream_:
            chunks = [chunk async for chunk in stream_]
            words = list(stream_.words)
        seconds = sum(len(c) for c in chunks) / engine.capabilities.sample_rate
    finally:
        await engine.close()
    assert [(w.char_start, w.char_end) for w in words] == word_spans(TEXT)
    assert all(w.text == TEXT[w.char_start : w.char_end] and w.source is TimingSource.ESTIMATED for w in words)
    for word, following in zip(words, words[1:]):
        assert word.start_s < word.end_s <= following.start_s + 1e-9
    assert words[0].start_s == 0.0
    # The clauses' token counts give their lengths: the last word ends where the audio does, within the
    # vocoder's edge (a clause's audio is its tokens' mel frames; v1 rounds frames down per clause: 2 clauses x 12 ms).
    assert abs(words[-1].end_s - seconds) < 0.05, (words[-1].end_s, seconds)
