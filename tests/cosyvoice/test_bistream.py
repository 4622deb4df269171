"""Text-fed ("bistream") decoding against upstream's, on the tiny v2 model.

The fixture (tools/cosyvoice_reference_bistream.py, run in the reference venv)
scripts the sampler: argmax over the speech tokens, the fill token at given
calls, the stop token late in the tail. Ours takes the same scripted choices;
the tokens must match exactly and every call's log-probabilities within the
LLM's float32 rounding bound, so the whole input layout is checked.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from cosyvoice.engine import Mode, SynthesisRequest
from cosyvoice.errors import UnsupportedMode
from cosyvoice.model.bistream import MIX_SPEECH, Phase, TextFedDecoding
from cosyvoice.text_stream import TextStream, TextStreamingEngine
from cosyvoice.timing import TimingSource, WordTiming, word_spans
from signaling.messages import UtteranceCancelled, Word
from signaling.session import Session, SessionLimits, Transport
from support.waiting import until
from tests.cosyvoice.test_parity import llm_bound, max_error
from tests.cosyvoice.conftest import FIXTURES
from tools.cosyvoice_reference_fixtures_check import fingerprint



@pytest.fixture(scope="module")
def bistream_reference() -> dict:
    return torch.load(FIXTURES / "reference_v2_bistream.pt", weights_only=True)


class Scripted:
    """The fixture's sampler: the same rule, applied to our log-probabilities (recorded per call)."""

    def __init__(self, case: dict, lm) -> None:
        self.speech, self.fill = lm.speech_token_size, lm.speech_token_size + 2  # v2: eos, unused, fill
        opens = torch.cumsum(case["open"].long(), 0).tolist()  # the ordinal of each open-text call
        self.fill_calls = {n for n, o, c in zip(opens, case["open"].tolist(), case["choices"].tolist())
                           if o and c == self.fill}
        self.tail_calls = int((~case["open"]).sum()) - 1  # the last one took the stop token
        self.rows: list[torch.Tensor] = []
        self.phases: list[Phase] = []

    def __call__(self, logp: torch.Tensor, history: list[int], phase: Phase) -> int:
        self.rows.append(logp.clone())
        self.phases.append(phase)
        if phase is Phase.OPEN and self.phases.count(Phase.OPEN) in self.fill_calls:
            return self.fill
        if phase is Phase.CLOSED and self.phases.count(Phase.CLOSED) > self.tail_calls:
            return self.speech  # v2's stop token
        return int(logp[: self.speech].argmax())


def run(lm, case: dict, choose) -> list[int]:
    """All pieces fed up front (they go in one per fill, as upstream pulls its generator), then closed."""
    decoding = TextFedDecoding(lm, case["prompt_text"], case["prompt_speech"], choose=choose)
    for piece in case["pieces"]:
        decoding.feed(piece)
    decoding.close()
    tokens = []
    while not decoding.done:
        token = decoding.step()
        if token is not None:
            tokens.append(token)
    return tokens


def test_fixture_matches_the_generator(model_dirs, bistream_reference):
    expected = bistream_reference["fingerprint"]
    actual = fingerprint(model_dirs[2])
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=1e-6), f"{key}.pt differs: regenerate the fixture"


@pytest.mark.parametrize("name", ["plain", "prompt"])
def test_tokens_and_logprobs_match_upstream(models, bistream_reference, name):
    case = bistream_reference[name]
    choose = Scripted(case, models[2].llm)
    tokens = run(models[2].llm, case, choose)
    assert tokens == case["tokens"].tolist()
    ours = torch.stack(choose.rows)
    theirs = case["logp"]
    assert [p is Phase.OPEN for p in choose.phases] == case["open"].tolist()
    finite = torch.isfinite(theirs)
    # our open-text rows bar the non-fill stop ids (upstream rejects them after drawing): compare speech + fill
    columns = list(range(choose.speech)) + [choose.fill]
    error = max_error(torch.where(finite, ours, 0)[:, columns], torch.where(finite, theirs, 0)[:, columns])
    assert error < llm_bound(theirs)


def test_a_misplaced_text_block_misses_the_bound(models, bistream_reference, monkeypatch):
    """The bound is tight enough to see a layout mistake: text blocks of 4, not 5."""
    from cosyvoice.model import bistream

    monkeypatch.setattr(bistream, "MIX_TEXT", 4)
    case = bistream_reference["prompt"]
    choose = Scripted(case, models[2].llm)
    run(models[2].llm, case, choose)
    n = min(len(choose.rows), case["logp"].size(0))
    ours, theirs = torch.stack(choose.rows[:n])[:, : choose.speech], case["logp"][:n, : choose.speech]
    assert max_error(ours, theirs) > 100 * llm_bound(case["logp"])


def test_fills_come_every_mix_speech_plus_one_tokens_after_the_first(models, bistream_reference):
    case = bistream_reference["plain"]
    choose = Scripted(case, models[2].llm)
    decoding = TextFedDecoding(models[2].llm, case["prompt_text"], case["prompt_speech"], choose=choose)
    for piece in case["pieces"]:
        decoding.feed(piece)
    decoding.close()
    while not decoding.done:
        decoding.step()
    fills = [i for i, t in enumerate(decoding.tokens) if t == decoding.fill]
    # chosen at the 6th and 21st open calls (the fixture's script), then forced every MIX_SPEECH + 1
    assert fills[:2] == [5, 20] and len(fills) > 3
    assert all(b - a == MIX_SPEECH + 1 for a, b in zip(fills[1:], fills[2:]))


def test_waits_for_text_and_ends_after_close(models):
    """Without text it takes no step; a block of text lets it run to a fill; the close ends it."""
    lm = models[2].llm
    fill = lm.speech_token_size + 2

    def choose(logp, history, phase):  # a random tiny model seldom picks fill: take it as the fourth token
        return fill if phase is Phase.OPEN and len(history) == 3 else int(logp[: lm.speech_token_size].argmax())

    empty = torch.zeros(0, dtype=torch.long)
    decoding = TextFedDecoding(lm, empty, empty, choose=choose)
    assert decoding.waiting and decoding.step() is None
    decoding.feed(torch.tensor([5, 6, 7]))
    assert decoding.step() is None and decoding.waiting  # three tokens: less than a block
    decoding.feed(torch.tensor([8, 9]))
    produced = []
    while not decoding.waiting:
        token = decoding.step()
        if token is not None:
            produced.append(token)
    assert produced == decoding.tokens[:3] and decoding.tokens[-1] == fill
    decoding.close()
    while not decoding.done:
        decoding.step()
    assert decoding.tokens[-1] in lm.stop_tokens or decoding.spoken >= 20 * 5
    with pytest.raises(ValueError):
        decoding.feed(torch.tensor([1]))


# -- through the engine ---------------------------------------------------------------------------------

PIECES = ["Hello there,", " this is", " a reply", " that arrives", " word by word,", " as an agent's", " language",
          " model writes it,", " and it goes on", " for a while."]


@pytest.fixture
async def engine(model_dirs):
    from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions

    engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[2]), device="cpu"))
    await engine.start()
    yield engine
    await engine.close()


async def speak(engine, delay: float, speed: float = 1.0) -> tuple[list[np.ndarray], list[WordTiming]]:
    """PIECES through a TextStream, the later ones ``delay`` seconds apart while the audio plays: its
    audio and its word timings."""
    text = TextStream()
    request = SynthesisRequest(text=PIECES[0], mode=Mode.SFT, seed=7, speed=speed)
    stream = engine.synthesize_text_stream(request, text)

    async def writer() -> None:
        for piece in PIECES[1:]:
            await asyncio.sleep(delay)
            text.append(piece)
        text.close()

    task = asyncio.create_task(writer())
    chunks = [chunk async for chunk in stream]
    await task
    return chunks, list(stream.words)


async def test_one_decoding_for_the_whole_reply_whatever_the_text_timing(engine):
    """Text goes in when the model asks for it, so when it arrives does not change the speech: the
    reply's tokens are those of one text-fed decoding of all its pieces (960 samples per token)."""
    chunks, _ = await speak(engine, 0.0)
    trickled, _ = await speak(engine, 0.05)
    at_once = np.concatenate(chunks)
    assert np.array_equal(at_once, np.concatenate(trickled))
    # tokens come only as fast as the text: each chunk leaves as soon as it is solved (one 25-token
    # flow chunk, 24000 samples), not in the growing hops of a clause whose LLM runs ahead
    assert len(chunks) > 4 and max(len(c) for c in chunks[:-1]) <= 25 * 960
    lm = engine.components.llm
    empty = torch.zeros(0, dtype=torch.long)
    decoding = TextFedDecoding(lm, empty, empty, seed=7)
    for piece in PIECES:
        decoding.feed(torch.tensor(engine.components.tokenizer.encode(piece), dtype=torch.long))
    decoding.close()
    while not decoding.done:
        decoding.step()
    assert decoding.spoken > 0 and len(at_once) == 960 * decoding.spoken


@pytest.mark.parametrize("speed", [1.0, 1.5])
async def test_a_streamed_reply_times_every_word_it_was_fed(engine, speed):
    """Once the last speech token is known, the whole text fed (the request's, then each piece) shares
    the whole audio out by text tokens, as a clause's does: every word, in order, within the audio."""
    chunks, words = await speak(engine, 0.01, speed)
    text = "".join(PIECES)
    seconds = sum(len(c) for c in chunks) / engine.capabilities.sample_rate
    assert [(w.char_start, w.char_end) for w in words] == word_spans(text)
    assert all(w.text == text[w.char_start : w.char_end] and w.source is TimingSource.ESTIMATED for w in words)
    assert words[0].start_s == 0.0
    for word, following in zip(words, words[1:]):
        assert word.start_s < word.end_s <= following.start_s + 1e-9  # float sums of the shares
    # The tokens give the length: exactly (960 samples each) at speed 1; at 1.5 each 25-token flow chunk rounds
    # its mel frames (13 ms over this reply's 15 chunks), so within a few 20 ms frames.
    assert abs(words[-1].end_s - seconds) < 0.05, (words[-1].end_s, seconds)


async def test_text_streaming_is_refused_where_unsupported(engine, model_dirs):
    from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions

    assert isinstance(engine, TextStreamingEngine) and engine.capabilities.text_streaming
    with pytest.raises(UnsupportedMode):
        engine.synthesize_text_stream(SynthesisRequest(text="x", mode=Mode.VC, source_audio=None), TextStream())
    v1 = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[1]), device="cpu"))
    await v1.start()
    try:
        assert not v1.capabilities.text_streaming
        with pytest.raises(UnsupportedMode, match="v2/v3"):
            v1.synthesize_text_stream(SynthesisRequest(text="hello", mode=Mode.SFT), TextStream())
    finally:
        await v1.close()


class EngineSpeech:
    """A session's speech source on the real engine: clauses counted, text streamed."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.clauses = 0

    def check(self, voice):
        pass

    def open(self, text, voice):
        self.clauses += 1
        return self.engine.synthesize(SynthesisRequest(text=text, mode=Mode.SFT, seed=7))

    def streams_text(self, voice):
        return self.engine.capabilities.text_streaming

    def open_text(self, text, voice, more):
        return self.engine.synthesize_text_stream(SynthesisRequest(text=text, mode=Mode.SFT, seed=7), more)


async def test_a_session_speaks_a_streamed_reply_as_one_decoding(engine):
    """A session with text_streaming on the real engine: the words said one by one become one
    decoding of all of them (its token count sets the audio's length), with no clause request."""
    lm = engine.components.llm
    empty = torch.zeros(0, dtype=torch.long)
    decoding = TextFedDecoding(lm, empty, empty, seed=7)
    for piece in PIECES:
        decoding.feed(torch.tensor(engine.components.tokenizer.encode(piece), dtype=torch.long))
    decoding.close()
    while not decoding.done:
        decoding.step()

    speech = EngineSpeech(engine)
    limits = SessionLimits(max_lead_seconds=600)  # nobody plays the buffer out here: no backpressure
    session = Session(speech, transport=Transport.WEBSOCKET, output_rate=24000, text_streaming=True, limits=limits)
    for piece in PIECES:
        utterance = session.say(piece)
        await asyncio.sleep(0.02)
    session.flush()
    await until(lambda: utterance.audio_samples >= 960 * decoding.spoken, 60, "the reply's audio")
    await asyncio.sleep(0.1)
    assert utterance.audio_samples == 960 * decoding.spoken and speech.clauses == 0
    await session.close()


async def test_a_session_hears_a_streamed_reply_word_by_word(engine):
    """Its words reach the session once the reply's LLM is done: ``word`` events as their audio plays,
    placed in the utterance's text (after what came before the stream), and a ``heard_text`` at a cut."""
    session = Session(EngineSpeech(engine), transport=Transport.WEBSOCKET, output_rate=24000, text_streaming=True,
                      limits=SessionLimits(max_lead_seconds=600))  # nobody plays the buffer out: no backpressure
    events = session.events.subscribe()
    utterance = session.say("... ")  # punctuation alone waits: the stream starts after it, at char 4
    for piece in PIECES:
        session.say(piece)
        await asyncio.sleep(0.01)
    session.flush()  # closes the text: the LLM can finish
    await until(lambda: utterance.words, 60, "the reply's word timings")
    half = round(utterance.words[-1].end_s * 24000 / 2)
    await until(lambda: utterance.audio_samples >= half, 60, "half the reply's audio")
    while utterance.played_samples < half:
        session.on_frame(session.buffer.read(480))
    session.cancel()
    await session.close()
    received = [event async for event in events]
    words = [event for event in received if isinstance(event, Word)]
    text = utterance.text
    assert text == "... " + "".join(PIECES)
    spans = [(start + 4, end + 4) for start, end in word_spans("".join(PIECES))]
    played = [(w.char_start, w.char_end) for w in utterance.words if w.start_s < half / 24000]
    assert [(w.char_start, w.char_end) for w in words] == played and spans[: len(played)] == played
    assert all(w.word == text[w.char_start : w.char_end] for w in words)
    (cancelled,) = [event for event in received if isinstance(event, UtteranceCancelled)]
    heard = cancelled.summary.heard_text
    assert heard is not None and heard == text[: played[-1][1]] and 0 < len(played) < len(spans)
