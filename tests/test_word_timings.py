"""Word timings: the embedded voice's words line up with its audio; the matching of phonemes to words."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cosyvoice import SynthesisRequest, TimingSource, WordTiming
from cosyvoice.embedded import EmbeddedEngine, EmbeddedOptions
from cosyvoice.embedded.alignment import Sound, words_in_audio
from cosyvoice.timing import char_spans, heard_text, spread, word_spans

TEXT = "Good morning, everyone. The quick brown fox jumps over the lazy dog in 2024, and that's well-known."
WORDS = word_spans(TEXT)


async def _speak(text: str) -> tuple[np.ndarray, list[WordTiming], int]:
    engine = EmbeddedEngine(EmbeddedOptions(workers=1))
    await engine.start()
    try:
        async with engine.synthesize(SynthesisRequest(text=text, seed=1)) as stream:
            chunks = [chunk async for chunk in stream]
            return np.concatenate(chunks), list(stream.words), stream.sample_rate
    finally:
        await engine.close()


@pytest.fixture(scope="module")
def spoken() -> tuple[np.ndarray, list[WordTiming], int]:
    """The text's audio and word timings from the embedded voice, rendered deterministically once."""
    return asyncio.run(_speak(TEXT))


async def test_every_word_is_timed_in_order_within_the_audio(spoken) -> None:
    audio, words, rate = spoken
    assert [(w.char_start, w.char_end) for w in words] == WORDS
    assert all(w.text == TEXT[w.char_start : w.char_end] for w in words)
    assert all(w.source is TimingSource.ALIGNED for w in words)  # the joe voice exposes its durations
    for word, following in zip(words, words[1:]):
        assert word.start_s < word.end_s <= following.start_s, (word, following)
    assert 0 <= words[0].start_s and words[-1].end_s <= len(audio) / rate


def _energy(audio: np.ndarray, rate: int, start: float, end: float) -> float:
    part = audio[int(start * rate) : int(end * rate)]
    return float(np.sqrt(np.mean(part.astype(np.float64) ** 2))) if len(part) else 0.0


async def test_the_pauses_between_words_are_quieter_than_the_words(spoken) -> None:
    audio, words, rate = spoken
    by_text = {w.text: w for w in words}
    # The pauses at punctuation: after "morning," and "everyone." the voice is (nearly) silent.
    for before, after in (("morning", "everyone"), ("everyone", "The"), ("2024", "and")):
        gap = (by_text[before].end_s, by_text[after].start_s)
        assert gap[1] - gap[0] >= 0.05, (before, after, gap)  # a punctuation pause lasts 100 ms or more
        quiet = _energy(audio, rate, *gap)
        loud = min(_energy(audio, rate, by_text[w].start_s, by_text[w].end_s) for w in (before, after))
        assert quiet < 0.5 * loud, (before, after, quiet, loud)
    # Over the whole text, speech sits inside the words: the gaps hold far less energy per second.
    inside = sum(_energy(audio, rate, w.start_s, w.end_s) ** 2 * (w.end_s - w.start_s) for w in words)
    span = sum(w.end_s - w.start_s for w in words)
    total = float(np.sum(audio.astype(np.float64) ** 2)) / rate
    outside_seconds = len(audio) / rate - span
    assert (total - inside) / outside_seconds < 0.5 * inside / span


def test_phonemes_are_matched_to_words_across_merges_and_splits() -> None:
    """espeak says "of the" as one word and "2024" as three; each phoneme still finds its word."""
    lexicon = {"of": "ʌv", "the": "ðə", "in": "ɪn", "2024": "tuːθaʊzəndtwɛntifɔːɹ"}
    text = "of the, in 2024"
    said = "^ ʌvðə, ɪn tuː θaʊzənd twɛnti fɔːɹ $"
    sounds, t = [], 0
    for phoneme in said:
        sounds.append(Sound(phoneme, t, t + 10))
        t += 10
    spans = words_in_audio(text, sounds, lambda word: list(lexicon[word]))
    assert [(s.char_start, s.char_end) for s in spans] == word_spans(text)
    starts = {text[s.char_start : s.char_end]: (s.start, s.end) for s in spans}
    assert starts["of"] == (20, 40) and starts["the"] == (40, 60)  # one phoneme word, split between two words
    assert starts["in"] == (80, 100)
    assert starts["2024"] == (110, 340)  # three phoneme words (and the spaces between them), one text word


def test_a_word_the_voice_dropped_gets_an_empty_span_in_place() -> None:
    sounds = [Sound(p, 10 * i, 10 * i + 10) for i, p in enumerate("^ab cd$")]
    spans = words_in_audio("ab xyz cd", sounds, lambda word: {"ab": "ab", "xyz": "", "cd": "cd"}[word])
    assert [(s.start, s.end) for s in spans] == [(10, 30), (30, 30), (40, 60)]


def test_word_spans_and_heard_text() -> None:
    text = "Hi, it's 3.5 km — 你好!"
    assert [text[a:b] for a, b in word_spans(text)] == ["Hi", "it's", "3.5", "km", "你", "好"]
    words = spread(text, word_spans(text), [1, 1, 1, 1, 1, 1], 0.0, 6.0)
    assert [w.start_s for w in words] == [0, 1, 2, 3, 4, 5] and words[-1].end_s == 6
    assert all(w.source is TimingSource.ESTIMATED for w in words)
    assert heard_text(text, words, 0.0) == ""
    assert heard_text(text, words, 0.5) == "Hi"
    assert heard_text(text, words, 2.01) == "Hi, it's 3.5"
    assert heard_text(text, words, 99) == text[:-1]  # the closing "!" is not a word
    assert WordTiming("a", 1, 2, 0, 1, TimingSource.ALIGNED).shifted(1.5, 10) == WordTiming(
        "a", 2.5, 3.5, 10, 11, TimingSource.ALIGNED
    )


def test_characters_share_their_word_and_the_pauses_between_words() -> None:
    text = "Hi, you!"
    words = [
        WordTiming("Hi", 0.1, 0.3, 0, 2, TimingSource.ALIGNED),
        WordTiming("you", 0.5, 0.8, 4, 7, TimingSource.ALIGNED),
    ]
    spans = char_spans(text, words, end_s=1.0)
    assert len(spans) == len(text)
    expected = [(0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)]
    assert np.allclose(spans, expected)
    assert char_spans("", []) == [] and np.allclose(char_spans("ab", []), [(0, 0), (0, 0)])


def test_a_voice_without_durations_shares_each_sentence_evenly_and_says_so() -> None:
    """Where the voice model gives no phoneme durations (no onnx package), the worker estimates them."""
    from types import SimpleNamespace

    from cosyvoice.embedded.worker import _add_sounds  # the worker's helpers import no Piper code

    sounds: list[Sound] = []
    chunk = SimpleNamespace(phonemes=list("ab cd"), phoneme_alignments=None)
    assert _add_sounds(sounds, chunk, offset=700, length=700) is False
    assert [(s.phoneme, s.start, s.end) for s in sounds][:3] == [("^", 700, 800), ("a", 800, 900), ("b", 900, 1000)]
    spans = words_in_audio("ab cd", sounds, lambda word: list(word))
    assert [(s.start, s.end) for s in spans] == [(800, 1000), (1100, 1300)]
