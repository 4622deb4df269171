"""The incremental runtime computes what the recompute path computes.

Streaming flow chunks with carried keys/values, convolution tails and noise
offsets must equal upstream's way (recompute [prompt | tokens so far] every
chunk and slice), the incremental v3 vocoder must equal vocoding the whole
mel, and batched LLM decoding must equal one sequence at a time. Measured
differences are float32 rounding (flow <= 3e-6 for mel values up to ~5,
vocoder <= 2e-7, log-probabilities <= 1e-6); the tolerances bound float32
rounding for each computation (tests/cosyvoice/tolerance.py); each test also
shows that dropping a carried tail or misaligning the noise misses by orders
of magnitude.
"""

from __future__ import annotations

import pytest
import torch

from cosyvoice.model.hift import SourceDraws
from cosyvoice.model.pipeline import fixed_draws
from cosyvoice.model.vocoder import CausalVocoder, HiftStream, vocode
from cosyvoice.runtime.schedule import HopSchedule
from tests.cosyvoice.tolerance import FLOW_CONDITION, FLOW_TERMS, LLM_TERMS, VOCODER_TERMS, rounding, scale, waveform

FLOW_TOL = rounding(5.0, FLOW_TERMS, FLOW_CONDITION)  # mel of these inputs: values up to ~5
# the v3 vocoder computes F0 and the phase in float64: only the network's own float32 sums remain
VOCODER_TOL = rounding(0.08, VOCODER_TERMS)  # the tiny vocoder's output peaks near 0.08
LOGP_TOL = rounding(8.0, LLM_TERMS)  # log-probabilities down to ~-8
HOPS = [5, 25, 50]  # a 20-token prompt: 5 tokens reach the first 25-token boundary


def inputs(seed: int, prompt_tokens: int = 20, tokens: int = 90):
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 200, (prompt_tokens,), generator=gen)
    feat = torch.randn(1, 2 * prompt_tokens, 80, generator=gen) - 5
    return prompt, feat, torch.randn(1, 192, generator=gen), torch.randint(0, 200, (tokens,), generator=gen)


def recomputed(model, prompt, feat, embedding, tokens, hops):
    """Upstream's streaming: every chunk runs the flow on all tokens so far, then slices; the last call
    (``finalize`` without ``stream``) has no chunk masks."""
    flow, out, offset = model.flow, [], 0
    for hop in hops:
        mel = flow(tokens[: offset + hop + 3], prompt, feat, embedding, model.noise, streaming=True, finalize=False)
        out.append(mel[:, :, offset * 2 :])
        offset += hop
    out.append(flow(tokens, prompt, feat, embedding, model.noise, streaming=False, finalize=True)[:, :, offset * 2 :])
    return torch.cat(out, dim=2)


def incremental(model, prompt, feat, embedding, tokens, hops, *, noise=None, after_first=None, neighbour=None):
    """Our streaming: each chunk's new tokens only, with carried state, and the last segment from one
    unmasked pass over everything; optionally beside another session."""
    flow, out, offset = model.flow, [], 0
    session = flow.begin(feat, embedding, streaming=True)
    sequence = torch.cat([prompt, tokens])
    for i, hop in enumerate(hops + [None]):
        final = hop is None
        end = len(sequence) if final else len(prompt) + offset + hop
        if final:
            session = session.unmasked()
        flow.encode(session, sequence[session.tokens : end], None if final else sequence[end : end + 3])
        sessions = [session]
        if neighbour is not None and neighbour.tokens < 100:  # its prompt and more, in whole chunks
            flow.encode(neighbour, torch.randint(0, 200, (25,)), torch.tensor([1, 2, 3]))
            sessions.append(neighbour)
        mel = flow.render(sessions, model.noise if noise is None else noise)[0]
        out.append(mel[:, :, offset * 2 :] if final else mel)
        if after_first is not None and i == 0:
            after_first(session)
        offset = end - len(prompt)
    return torch.cat(out, dim=2)


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return (a - b).abs().max().item()


@pytest.mark.parametrize("generation", [2, 3])
def test_incremental_flow_equals_recompute(generation, models):
    model = models[generation]
    prompt, feat, embedding, tokens = inputs(1)
    expected = recomputed(model, prompt, feat, embedding, tokens, HOPS)
    neighbour = model.flow.begin(feat[:, :14], embedding * 0.5, streaming=True)
    assert error(incremental(model, prompt, feat, embedding, tokens, HOPS, neighbour=neighbour), expected) < FLOW_TOL

    def drop_tails(session):
        session.estimator.tails.clear()

    def drop_context(session):  # v2: the upsampling conv's inputs; v3: the lookahead conv's
        session.encoder.up_tail = None
        session.lookahead_tail = None

    for broken in (
        incremental(model, prompt, feat, embedding, tokens, HOPS, after_first=drop_tails),
        incremental(model, prompt, feat, embedding, tokens, HOPS, after_first=drop_context),
        incremental(model, prompt, feat, embedding, tokens, HOPS, noise=model.noise[:, :, 1:]),
    ):
        assert error(broken, expected) > 1000 * FLOW_TOL


@pytest.mark.parametrize("generation", [2, 3])
def test_one_call_without_chunk_masks_equals_the_full_path(generation, models):
    model = models[generation]
    prompt, feat, embedding, tokens = inputs(2)
    full = model.flow(tokens, prompt, feat, embedding, model.noise, streaming=False, finalize=True)
    session = model.flow.begin(feat, embedding, streaming=False)
    model.flow.encode(session, torch.cat([prompt, tokens]), None)
    assert error(model.flow.render([session], model.noise)[0], full) < FLOW_TOL
    with pytest.raises(ValueError, match="one call"):
        model.flow.encode(model.flow.begin(feat, embedding, streaming=False), tokens[:5], tokens[5:8])


def test_a_streamed_chunk_must_end_on_a_boundary(models):
    flow = models[2].flow
    prompt, feat, embedding, tokens = inputs(3)
    with pytest.raises(ValueError, match="multiple of 25"):
        flow.encode(flow.begin(feat, embedding, streaming=True), tokens[:6], tokens[6:9])


def test_incremental_causal_vocoder_equals_whole_mel(models):
    hift = models[3].hift
    draws = fixed_draws(hift, seconds=3.0)
    gen = torch.Generator().manual_seed(0)
    mels = [torch.randn(1, 80, n, generator=gen) - 5 for n in (120, 90)]
    wholes = [hift(mel, draws)[0][0] for mel in mels]
    cuts = [(0, 2, 7, 50, 120), (0, 30, 31, 90)]  # two packed sessions; chunks of 1 to 70 frames

    def streamed(draws=draws, after_third=None):
        vocoder = CausalVocoder(hift, draws)
        sessions = [vocoder.begin(), vocoder.begin()]
        out = [[], []]
        for step in range(4):
            live = [i for i in (0, 1) if step + 1 < len(cuts[i])]
            waves = vocoder.push(
                [sessions[i] for i in live],
                [mels[i][:, :, cuts[i][step] : cuts[i][step + 1]] for i in live],
                [step + 2 == len(cuts[i]) for i in live],
            )
            for i, wave in zip(live, waves):
                out[i].append(wave)
            if after_third is not None and step == 2:
                after_third(sessions[0])
        return [torch.cat(parts) for parts in out]

    for got, whole in zip(streamed(), wholes):
        assert error(got, whole) < VOCODER_TOL

    def drop_conv_tails(session):
        for key in [k for k in session.convs.tails if isinstance(k, tuple)]:
            del session.convs.tails[key]

    def drop_phase(session):
        session.phase = None

    shifted = SourceDraws(draws.phase, draws.noise[:, hift.hop_samples :])
    for broken in (streamed(after_third=drop_conv_tails), streamed(after_third=drop_phase), streamed(draws=shifted)):
        assert error(broken[0], wholes[0]) > 100 * VOCODER_TOL


def test_batched_vocoding_keeps_each_sessions_draws(models):
    """Batching the v1/v2 vocoder changes float rounding only (the excitation integrates F0, so it
    grows to ~1e-5); each session keeps its own random draws."""
    hift = models[2].hift
    gen = torch.Generator().manual_seed(4)
    mels = [torch.randn(1, 80, 40, generator=gen) - 5 for _ in range(3)]

    def streams():
        return [HiftStream(hift, torch.Generator().manual_seed(10 + i)) for i in range(3)]

    alone = [s.push(m, final=False) for s, m in zip(streams(), mels)]
    together = vocode(streams(), mels, [False] * 3)
    for a, b in zip(alone, together):
        assert error(a, b) < waveform(scale(a), 40 * hift.hop_samples / hift.sampling_rate)
    assert error(together[0][:1000], together[1][:1000]) > 1e-3  # different generators, different draws


@pytest.mark.parametrize("generation", [1, 2])
def test_batched_decoding_equals_one_at_a_time(generation, models):
    llm = models[generation].llm
    gen = torch.Generator().manual_seed(5)
    vocab = 2000 if generation == 1 else 1000
    empty = torch.zeros(0, dtype=torch.long)
    prompts = [
        llm.prompt(torch.randint(0, vocab, (n,), generator=gen), empty, torch.randint(0, 100, (p,), generator=gen),
                   torch.randn(1, 192, generator=gen) if generation == 1 else None)
        for n, p in ((12, 9), (5, 0), (20, 30))
    ]
    forced = [torch.randint(0, 100, (30,), generator=gen).tolist() for _ in prompts]
    expected = []
    for prompt, tokens in zip(prompts, forced):
        state = llm.start(prompt, text_len=10, seed=None)
        rows = [state.logp]
        for token in tokens:
            llm.advance(state, token)
            rows.append(state.logp)
        expected.append(torch.stack(rows))
    batch = llm.batch()
    states, got = [], [[] for _ in prompts]
    for step in range(34):
        if step < 3:  # joins while others decode
            states.append(llm.start(prompts[step], text_len=10, seed=None))
            batch.add(states[-1])
            got[step].append(states[-1].logp)
        if step == 12:  # leaves mid-batch: its rows are reused
            batch.remove(states[1])
        fed = {id(s): forced[i][len(s.tokens)] for i, s in enumerate(states) if s in batch.states and len(s.tokens) < 30}
        for s in [s for s in batch.states if id(s) not in fed]:
            batch.remove(s)
        batch.advance(fed)
        for i, s in enumerate(states):
            if id(s) in fed:
                got[i].append(s.logp)
    for rows, reference in zip(got, expected):
        assert error(torch.stack(rows), reference[: len(rows)]) < LOGP_TOL
    assert len(got[1]) == 12 and len(got[0]) == 31  # start + 11 steps before it left; start + 30


@pytest.mark.parametrize(
    "prompt,first_hop,expected",
    [(0, 25, 25), (0, 5, 25), (20, 5, 5), (20, 25, 30), (140, 5, 10), (140, 11, 35), (17, 1, 8)],
)
def test_first_hop_reaches_a_chunk_boundary(prompt, first_hop, expected):
    schedule = HopSchedule(25, first_hop, 100)
    hop = schedule.first(prompt)
    assert hop == expected and (prompt + hop) % 25 == 0
    later = [schedule.next(hop, True)]
    for _ in range(3):
        later.append(schedule.next(later[-1], False))
    assert later == [25, 50, 100, 100]
    assert HopSchedule(25, 5, 60).next(50, False) == 50  # max_hop rounds down to whole chunks


def test_streamed_v3_audio_equals_the_recompute_path(models):
    """The v3 renderer end to end: a 60-token prompt goes through the flow before any audio chunk (its
    two whole chunks, as soon as the lookahead is known), then one 25-token attention chunk per call;
    audio leaves at the hop boundaries: the 15 tokens that reach the next boundary, then 25, 50; the
    last segment comes from one unmasked pass over everything (upstream's final call); since the v3
    vocoder is exact, the streamed audio equals vocoding the recompute path's mel in one go."""
    from cosyvoice.model.pipeline import ModeInputs
    from cosyvoice.runtime.render import FlowRenderer
    from cosyvoice.runtime.session import Session

    model = models[3]
    prompt, feat, embedding, tokens = inputs(6, prompt_tokens=60, tokens=120)
    draws = fixed_draws(model.hift, seconds=10.0)
    empty = torch.zeros(0, dtype=torch.long)
    renderer = FlowRenderer(model, HopSchedule(25, 5, 100), draws)
    session = Session(ModeInputs(empty, empty, None, prompt, feat, embedding), None, lambda item: None, generation=3)
    renderer.open(session)
    assert renderer.next_chunk(session) == (50, False)  # before the first speech token
    chunks, calls, frames = [], [], []
    for token in tokens.tolist() + [None]:
        if token is None:
            session.llm_done = True
        else:
            session.tokens.append(token)
        while (chunk := renderer.next_chunk(session)) is not None:
            calls.append((chunk[0], len(session.tokens)))
            frames.append(renderer.frames(session))
            chunks.append(torch.from_numpy(renderer.render([session])[0]))
    # (chunk end in [prompt | tokens], tokens known): one attention chunk per call, as soon as its lookahead is known
    assert calls[:5] == [(50, 1), (75, 18), (100, 43), (125, 68), (150, 93)]
    # audio leaves at the hop boundaries (15, 25, 50 tokens): the 125 chunk's frames wait for the 150 one's
    assert [chunk.numel() > 0 for chunk in chunks[:5]] == [False, True, True, False, True]
    # the last segment (after the hop that ends at 150): one pass over all 180 positions' frames
    assert calls[-1] == (180, 120) and frames[-1] == 180 * 2 and frames[-2] == 25 * 2
    mel = recomputed(model, prompt, feat, embedding, tokens, [15, 25, 50])
    expected = model.hift(mel, draws)[0][0]
    # the flows' float32 rounding (~1e-6 in mel) reaches the excitation's phase through F0: ~1e-5 here
    assert error(torch.cat(chunks), expected) < waveform(scale(expected), expected.numel() / model.hift.sampling_rate)


def test_batches_follow_urgency_and_cost():
    """Sessions without audio are served one by one in arrival order when a call costs what its frames
    cost (a CPU), and together when a call's overhead dominates (a GPU); a session with audio to spare
    lets others join while it still gets its next chunk in time."""
    import time as clock

    from cosyvoice.runtime.scheduler import RenderCost, Scheduler

    class Renderer:
        def frames(self, session):
            return 50

    now = clock.monotonic()
    waiting = [type("S", (), {"deadline": now - 3 + i})() for i in range(4)]
    scheduler = Scheduler(None, Renderer(), sample_rate=24000, max_batch=16)
    for frames, seconds in ((50, 5.0), (100, 10.0), (200, 20.0)):  # CPU-like: 0.1 s per frame, no overhead
        scheduler.cost.observe(frames, seconds)
    assert scheduler.cost.overhead < 1e-6 and abs(scheduler.cost.per_frame - 0.1) < 1e-6
    batch, _ = scheduler._choose(list(reversed(waiting)))
    assert batch == [waiting[0]]
    scheduler.cost = RenderCost()
    for frames, seconds in ((50, 0.051), (100, 0.052), (200, 0.054)):  # GPU-like: 50 ms per call
        scheduler.cost.observe(frames, seconds)
    batch, _ = scheduler._choose(list(waiting))
    assert batch == waiting
    scheduler.cost = RenderCost()
    scheduler.cost.observe(50, 5.0)
    playing = type("S", (), {"deadline": now + 60})()  # a minute of audio buffered
    later = type("S", (), {"deadline": now + 120})()
    batch, _ = scheduler._choose([later, playing])
    assert batch == [playing, later]


def test_prompt_cache_skips_the_prompt_and_changes_nothing(models):
    """A second session with the same prompt starts from the cached state after the prompt's own chunks
    (here the first 50 of 60 tokens) and streams what it would have streamed without the cache."""
    from cosyvoice.model.pipeline import ModeInputs
    from cosyvoice.runtime.prompt_cache import PromptCache
    from cosyvoice.runtime.render import FlowRenderer
    from cosyvoice.runtime.session import Session

    model = models[3]
    prompt, feat, embedding, _ = inputs(7, prompt_tokens=60)
    draws = fixed_draws(model.hift, seconds=10.0)
    empty = torch.zeros(0, dtype=torch.long)
    cache = PromptCache(1 << 30)

    def stream(renderer, tokens):
        session = Session(ModeInputs(empty, empty, None, prompt, feat, embedding), None, lambda item: None, generation=3)
        renderer.open(session)
        first_positions = session.render.flow.tokens
        chunks = []
        for token in tokens + [None]:
            if token is None:
                session.llm_done = True
            else:
                session.tokens.append(token)
            while renderer.next_chunk(session) is not None:
                chunks.append(torch.from_numpy(renderer.render([session])[0]))
        return first_positions, torch.cat(chunks)

    cached = FlowRenderer(model, HopSchedule(25, 5, 100), draws, cache)
    plain = FlowRenderer(model, HopSchedule(25, 5, 100), draws)
    gen = torch.Generator().manual_seed(8)
    first, second = (torch.randint(0, 200, (70,), generator=gen).tolist() for _ in range(2))
    assert stream(cached, first)[0] == 0 and cache.hits == 0 and len(cache.entries) == 1
    start, audio = stream(cached, second)
    assert start == 50 and cache.hits == 1
    assert error(audio, stream(plain, second)[1]) < VOCODER_TOL
    other = inputs(9, prompt_tokens=60)  # another voice does not hit
    assert PromptCache.key(ModeInputs(empty, empty, None, other[0], other[1], other[2])) not in cache.entries


@pytest.mark.parametrize("generation", [2, 3])
def test_bfloat16_flow_stays_close_to_float32(generation, models):
    """``dtype = "bfloat16"`` runs the flow under autocast: the incremental chunks' mel stays within
    bfloat16's rounding of the float32 one."""
    from cosyvoice.runtime.render import flow_precision

    model = models[generation]
    prompt, feat, embedding, tokens = inputs(7, prompt_tokens=25, tokens=75)
    positions = torch.cat([prompt, tokens])
    mels = {}
    for precision in (torch.float32, torch.bfloat16):
        with flow_precision(precision, torch.device("cpu")):
            state = model.flow.begin(feat, embedding, streaming=True)
            out = []
            for end in (25, 50, 75, 100):
                final = end == 100
                model.flow.encode(state, positions[state.tokens : end], None if final else positions[end : end + 3])
                out.append(model.flow.render([state], model.noise)[0].float())
        mels[precision] = torch.cat(out, dim=2)
    reference, narrow = mels[torch.float32], mels[torch.bfloat16]
    assert reference.shape == narrow.shape and torch.isfinite(narrow).all()
    relative = ((narrow - reference).norm() / reference.norm()).item()
    assert 0 < relative < 0.03, relative  # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding
