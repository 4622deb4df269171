"""The fixed-shape decode step (``StaticSlotCache``) computes what the exact-shape one (``SlotCache``) does.

Ten greedy sessions join and leave a batch on the tiny v2 and v3 models, so the
batch passes through sizes that pad (3 -> 4, 5..7 -> 8, 9..10 -> 16) and rows
that are freed and refilled mid-decode. Both batches must choose the same tokens
and give the same log-probabilities within float32 rounding; the fixed-shape
one must run every step on a bucket's rows over a whole number of SPAN_STEP
positions, and allocate nothing once its sessions have joined.
"""

from __future__ import annotations

import pytest
import torch

from cosyvoice.model.qwen2 import DECODE_BUCKETS, SPAN_STEP, StaticSlotCache, bucket

# Log-probabilities are sums over hidden 64 of values ~1 (the tiny model) then a log-softmax over
# ~400 ids, so float32 rounding (eps 1.2e-7) moves them by ~1e-6 where the two steps group the sums
# differently (another batch size, masked positions past a row's end); a padding row or a wrong
# position leaking into a row moves them by 1e-2 or more.
LOGP_TOL = 1e-5
JOINS = (0, 0, 1, 2, 4, 5, 6, 6, 7, 9)  # the step at which each session joins
CANCELLED = {1: 8, 4: 13}  # session -> the step at which it is taken out, still decoding
LONGEST = 24  # tokens per session, unless greedy decoding stops it first


def prompts(llm, gen: torch.Generator) -> list:
    empty = torch.zeros(0, dtype=torch.long)
    return [
        llm.prompt(torch.randint(0, 1000, (5 + 3 * i,), generator=gen), empty,
                   torch.randint(0, 100, ((7 * i) % 30,), generator=gen), None)
        for i in range(len(JOINS))
    ]


def run(llm, static: bool, monkeypatch) -> tuple[list[list[int]], list[torch.Tensor], list[tuple[int, int]]]:
    """Greedy decoding of every session through one batch: tokens and log-probabilities per
    session, and the (rows, attended positions) of every step."""
    batch = llm.batch(static=static)
    decoder = llm.llm.decoder
    shapes: list[tuple[int, int]] = []
    decode = decoder.decode

    def recording(embeds, cache):
        shapes.append((embeds.size(0), cache.positions(embeds.size(0))[1]))
        return decode(embeds, cache)

    monkeypatch.setattr(decoder, "decode", recording)
    sessions = prompts(llm, torch.Generator().manual_seed(11))
    states = [None] * len(sessions)
    rows = [[] for _ in sessions]
    step = 0
    while step <= max(JOINS) or batch.states:
        for i, joins in enumerate(JOINS):
            if joins == step:
                states[i] = llm.start(sessions[i], text_len=10, seed=None)
                batch.add(states[i])
                rows[i].append(states[i].logp)
        for i, leaves in CANCELLED.items():
            if leaves == step:
                batch.remove(states[i])
        fed = {}
        for state in list(batch.states):
            token = llm.choose(state, greedy=True)
            if token in llm.stop_tokens or len(state.tokens) >= LONGEST:
                batch.remove(state)
            else:
                fed[id(state)] = token
        batch.advance(fed)
        for i, state in enumerate(states):
            if state is not None and id(state) in fed:
                rows[i].append(state.logp)
        step += 1
    monkeypatch.undo()
    return [s.tokens for s in states], [torch.stack(r) for r in rows], shapes


@pytest.mark.parametrize("generation", [2, 3])
def test_fixed_shapes_decode_what_exact_shapes_decode(generation, models, monkeypatch):
    llm = models[generation].llm
    tokens, logp, exact = run(llm, False, monkeypatch)
    static_tokens, static_logp, fixed = run(llm, True, monkeypatch)
    assert static_tokens == tokens
    for a, b in zip(static_logp, logp):
        assert a.shape == b.shape and (a - b).abs().max() < LOGP_TOL
    assert [len(tokens[i]) for i in CANCELLED] == [8, 9]  # taken out mid-decode; the others stop or run out
    assert {rows for rows, _ in exact} >= {3, 5, 6, 7, 9}  # sizes that must pad
    assert all(rows == bucket(n) for (rows, _), (n, _) in zip(fixed, exact))
    assert {rows for rows, _ in fixed} <= set(DECODE_BUCKETS) and all(span % SPAN_STEP == 0 for _, span in fixed)


def test_steps_allocate_nothing_once_joined(models):
    llm = models[2].llm
    batch = llm.batch(static=True)
    gen = torch.Generator().manual_seed(3)
    empty = torch.zeros(0, dtype=torch.long)
    states = []
    for n in (4, 9, 6):
        states.append(llm.start(llm.prompt(torch.randint(0, 1000, (n,), generator=gen), empty, empty, None),
                                text_len=n, seed=None))
        batch.add(states[-1])
    cache = batch.cache
    assert isinstance(cache, StaticSlotCache) and cache.capacity[0] == 4
    assert cache.capacity[1] > max(length + s.max_len for length, s in zip(cache.host, states))  # every position
    buffers = [t.data_ptr() for t in (*cache.keys, *cache.values, cache.ids, cache.lengths, cache.staging)]
    while batch.states:
        fed = {id(s): 5 for s in batch.states if len(s.tokens) < s.max_len}
        for s in [s for s in batch.states if id(s) not in fed]:
            batch.remove(s)
        batch.advance(fed)
    assert [t.data_ptr() for t in (*cache.keys, *cache.values, cache.ids, cache.lengths, cache.staging)] == buffers
    assert [len(s.tokens) for s in states] == [s.max_len for s in states]
