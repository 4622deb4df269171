"""The vLLM backend's parts that run without vLLM (no GPU here): the closed-form sampling distribution,
the logits processor's row bookkeeping, the Hugging Face export, and the error when vllm is missing.

vLLM itself, the GPU and the end-to-end token stage are not exercised here.
"""

from __future__ import annotations

import enum
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from cosyvoice.model.sampling import SamplingOptions, ras, ras_distribution
from cosyvoice.runtime.vllm import MIN_LEN_ARG, RasConfig, RasRows, export

OPTIONS = SamplingOptions()


def two_draw_distribution(logp: torch.Tensor, history: list[int], monkeypatch) -> torch.Tensor:
    """The exact distribution of :func:`ras`, by enumerating what its draws can return."""
    seen = {}

    def capture(probs, n, generator=None):
        seen["first"] = probs / probs.sum()
        raise StopIteration

    monkeypatch.setattr(torch, "multinomial", capture)
    with pytest.raises(StopIteration):
        ras(logp, history, OPTIONS, None)
    out = torch.zeros_like(logp)
    for i, weight in enumerate(seen["first"]):
        draws = [i]

        def draw(probs, n, generator=None):
            if draws:
                return torch.tensor([draws.pop()])
            seen["redraw"] = probs / probs.sum()
            return torch.tensor([0])

        seen.pop("redraw", None)
        monkeypatch.setattr(torch, "multinomial", draw)
        token = ras(logp, history, OPTIONS, None)
        if "redraw" in seen:
            out += weight * seen["redraw"]
        else:
            out[token] += weight
    monkeypatch.undo()
    return out


def test_closed_form_is_the_two_draw_distribution(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    rows, histories = [], []
    for sharpness, repeat in ((0.5, 0), (3.0, 1), (1.0, 2), (5.0, 1)):
        logp = (torch.randn(300, generator=gen) * sharpness).log_softmax(0)
        logp[290:] = float("-inf")  # stop tokens barred
        top = logp.argsort(descending=True).tolist()
        rows.append(logp)
        histories.append(top[:repeat] + [7, 8])  # the best (and second best) tokens repeated in the window
    closed = ras_distribution(torch.stack(rows), histories, OPTIONS)
    for row, logp, history in zip(closed, rows, histories):
        expected = two_draw_distribution(logp, history, monkeypatch)
        assert (row - expected).abs().max() < 1e-6
        assert abs(row.sum().item() - 1) < 1e-5 and row[290:].sum() == 0
    repeated = histories[1][0]  # a repeat makes the best token rarer than it is without one
    assert closed[1][repeated] < ras_distribution(rows[1].unsqueeze(0), [[7, 8]], OPTIONS)[0][repeated]


class Move(enum.Enum):
    UNIDIRECTIONAL = 1
    SWAP = 2


def request(min_len: int | None, output: list[int]):
    params = SimpleNamespace(extra_args=None if min_len is None else {MIN_LEN_ARG: min_len})
    return params, None, output


def test_logits_processor_follows_the_batch():
    config = RasConfig(speech_token_size=90, options=OPTIONS)
    bias = torch.linspace(-1, 1, 100)
    rows = RasRows(config, bias, torch.device("cpu"))
    outputs = [[1, 2], [5] * 3, [9]]
    update = SimpleNamespace(removed=[], moved=[], added=[
        (0, *request(3, outputs[0])), (1, *request(None, [4])), (2, *request(0, outputs[1])), (3, *request(2, outputs[2])),
    ])
    rows.update(update)
    assert set(rows.rows) == {0, 2, 3}  # row 1 is someone else's request
    rows.update(SimpleNamespace(removed=[0], added=[], moved=[(2, 0, Move.UNIDIRECTIONAL), (3, 1, Move.SWAP)]))
    assert rows.rows == {0: (0, outputs[1]), 1: (2, outputs[2])}
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))
    untouched = logits[2].clone()
    out = rows.apply(logits.clone())
    assert torch.equal(out[2], untouched)
    for row, (min_len, output) in rows.rows.items():
        logp = (logits[row] + bias).log_softmax(0)
        if len(output) < min_len:
            logp[90:] = float("-inf")
        expected = ras_distribution(logp.unsqueeze(0), [output], OPTIONS)[0]
        assert torch.allclose(out[row].softmax(0), expected, atol=1e-6)
    assert out[1, 90:].exp().sum() == 0  # one token of two: stop tokens barred
    outputs[2].append(7)  # vLLM's live list: the next step sees the new token
    assert torch.isfinite(rows.apply(logits.clone())[1, 90:]).any()


@pytest.mark.parametrize("generation", [2, 3])
def test_export_is_the_backbone_with_the_speech_vocabulary(generation, models, tmp_path):
    """Loaded by transformers' Qwen2 (which vLLM's implements), the export computes our log-probabilities
    from our prompt embeddings (the head's bias added, as the logits processor does)."""
    from transformers import Qwen2ForCausalLM

    llm = models[generation].llm
    directory = export(llm, tmp_path / "export", dtype=torch.float32)
    assert export(llm, directory) == directory  # kept, not rewritten
    config, bias = RasConfig.load(directory)
    assert config.speech_token_size == llm.speech_token_size and (bias is None) == (generation == 3)
    hf = Qwen2ForCausalLM.from_pretrained(directory).eval()
    assert hf.config.vocab_size == llm.speech_embedding.num_embeddings
    gen = torch.Generator().manual_seed(3)
    prompt = llm.prompt(torch.randint(0, 1000, (9,), generator=gen), torch.zeros(0, dtype=torch.long),
                        torch.randint(0, 200, (6,), generator=gen), None)
    forced = torch.randint(0, 200, (12,), generator=gen)
    ours = llm.score(prompt, forced)
    with torch.inference_mode():
        embeds = torch.cat([prompt.embeds, hf.get_input_embeddings()(forced.view(1, -1))], dim=1)
        logits = hf(inputs_embeds=embeds).logits[0, prompt.task_index :]
    theirs = (logits + (0 if bias is None else bias)).log_softmax(-1)
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
async def test_vllm_backend_without_vllm_names_the_extra(model_dirs):
    from cosyvoice.model.engine import CosyVoiceEngine, CosyVoiceOptions

    engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[2]), device="cpu", llm_backend="vllm"))
    with pytest.raises(RuntimeError, match=r"vllm.*cosyvoice-gateway\[vllm\]"):
        await engine.start()
    assert not engine.ready
