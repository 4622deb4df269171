"""CosyVoice 3 has no reference package: its differences from v2 are checked one by one."""

from __future__ import annotations

import torch

from cosyvoice.model.dit import RotaryEmbedding, apply_rotary
from cosyvoice.model.llm import CosyVoice3LM
from cosyvoice.model.pipeline import fixed_draws
from tests.cosyvoice.tolerance import FLOW_CONDITION, FLOW_TERMS, VOCODER_TERMS, rounding, scale


def test_rotary_is_interleaved_and_covers_head_zero_only():
    angles = RotaryEmbedding(4)(3)
    x = torch.arange(1.0, 9.0).view(1, 1, 8).repeat(1, 3, 1)
    out = apply_rotary(x, angles)
    # x-transformers 2.11.24 gives these numbers for the same input (measured in the reference venv)
    expected = torch.tensor([-1.1426, 1.9221, 2.9599, 4.0298, 5.0, 6.0, 7.0, 8.0])
    assert torch.allclose(out[0, 1], expected, atol=1e-4)  # the numbers were printed to 4 decimals
    assert torch.equal(out[0, 0], x[0, 0])  # position 0 is not rotated
    assert torch.equal(out[..., 4:], x[..., 4:])  # channels past the first head are left alone


def test_dit_streaming_is_chunk_causal(models):
    flow = models[3].flow
    dit = flow.decoder.estimator
    frames = 120
    x, mu, cond = (torch.randn(1, 80, frames) for _ in range(3))
    spks = torch.randn(1, 80)
    mask = torch.ones(1, 1, frames)
    t = torch.tensor([0.3])
    changed = mu.clone()
    changed[:, :, 100:] += 1.0  # only the third 50-frame chunk changes
    for streaming in (True, False):
        a = dit(x, mask, mu, t, spks, cond, streaming)
        b = dit(x, mask, changed, t, spks, cond, streaming)
        # same inputs, same shapes, same kernels: what the change cannot reach is equal to the last bit
        first_chunks_same = torch.equal(a[:, :, :100], b[:, :, :100])
        assert first_chunks_same == streaming


def test_v3_flow_lookahead_and_token_ratio(models):
    flow = models[3].flow
    model = models[3]
    tokens = torch.randint(0, 200, (40,))
    prompt = torch.randint(0, 200, (10,))
    feat = torch.randn(1, 20, 80)
    spk = torch.randn(1, 192)
    final = flow(tokens, prompt, feat, spk, model.noise, streaming=True, finalize=True)
    partial = flow(tokens, prompt, feat, spk, model.noise, streaming=True, finalize=False)
    assert final.shape == (1, 80, 80) and partial.shape == (1, 80, 74)  # the last 3 tokens are only context
    # prompt 20 frames + target 30 = the first 50-frame attention chunk, which sees nothing later; the two
    # calls differ in length, so kernels may block their sums differently: the flow's rounding bound
    bound = rounding(scale(final), FLOW_TERMS, FLOW_CONDITION)
    assert (final[:, :, :30] - partial[:, :, :30]).abs().max() < bound
    assert (final[:, :, 30:74] - partial[:, :, 30:74]).abs().max() > 10 * bound  # the lookahead shows (~50x)


def test_v3_llm_specials_live_in_the_speech_table(models):
    llm = models[3].llm
    assert isinstance(llm, CosyVoice3LM) and not hasattr(llm, "llm_embedding")
    assert llm.llm_decoder.bias is None
    size = llm.speech_token_size
    assert list(llm.stop_tokens) == list(range(size, size + 200))
    sos, task = llm.specials()
    assert torch.equal(sos, llm.speech_embedding.weight[size]) and torch.equal(task, llm.speech_embedding.weight[size + 2])
    prompt = llm.prompt(torch.tensor([5, 6, 7]), torch.tensor([1]), torch.tensor([], dtype=torch.long), None)
    assert torch.equal(prompt.embeds[0, 0], sos) and torch.equal(prompt.embeds[0, prompt.task_index], task)
    state = llm.start(prompt, text_len=3, seed=1)
    assert all(llm.choose(state) < size for _ in range(20))  # before min_len no stop id can be drawn


def test_causal_hift_is_causal_with_fixed_draws(models):
    hift = models[3].hift
    draws = fixed_draws(hift, seconds=1.0)
    mel = torch.randn(1, 80, 30) - 5
    longer = torch.cat([mel, torch.randn(1, 80, 10) - 5], dim=2)
    a, _ = hift(mel, draws)
    b, _ = hift(longer, draws)
    keep = (30 - 8) * hift.hop_samples  # what no longer depends on the 4 + 3 frames of lookahead
    # F0 and the phase are float64 here: the network's own float32 sums bound the difference
    bound = rounding(scale(b), VOCODER_TERMS)
    assert (a[:, :keep] - b[:, :keep]).abs().max() < bound
    assert (a[:, keep:] - b[:, keep : a.size(1)]).abs().max() > 100 * bound
    assert hift.f0_predictor.classifier.weight.dtype == torch.float64  # F0 in double, as upstream
    assert draws.noise.min() >= 0  # uniform noise, not Gaussian


def test_short_noise_table_repeats(models):
    hift = models[3].hift
    draws = fixed_draws(hift, seconds=0.1)  # 2400 samples for 20 frames = 9600
    wave, _ = hift(torch.randn(1, 80, 20) - 5, draws)
    assert wave.shape == (1, 20 * hift.hop_samples)
