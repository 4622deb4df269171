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
from cosyvoice.runtime.ras import MIN_LEN_ARG, RasConfig, RasRows
from cosyvoice.runtime.vllm import export

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
    from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions

    engine = CosyVoiceEngine(CosyVoiceOptions(str(model_dirs[2]), device="cpu", llm_backend="vllm"))
    with pytest.raises(RuntimeError, match=r"vllm.*cosyvoice-gateway\[vllm\]"):
        await engine.start()
    assert not engine.ready


def test_token_stage_against_a_stand_in_engine(model_dirs, tmp_path, monkeypatch):
    """VllmTokens' bookkeeping with vLLM's API played by a script: prompts go in as bf16 embeddings with
    our sampling arguments, tokens come out per session, a stop token or a finished request ends it,
    and removing a session aborts its request."""
    import sys
    import types

    from cosyvoice.model.loader import load_model
    from cosyvoice.model.pipeline import ModeInputs
    from cosyvoice.runtime import tokens as runtime_tokens
    from cosyvoice.runtime.session import Session

    class Engine:
        def __init__(self, args):
            self.args, self.requests, self.aborted = args, {}, []

        @classmethod
        def from_engine_args(cls, args):
            return cls(args)

        def add_request(self, request, prompt, params):
            self.requests[request] = (prompt, params, list(script[len(self.requests)]), [])

        def abort_request(self, ids):
            self.aborted += ids
            for i in ids:
                self.requests.pop(i)

        def step(self):
            out = []
            for request, (_, _, todo, done) in list(self.requests.items()):
                done.append(todo.pop(0))
                finished = not todo or done[-1] >= 200
                out.append(SimpleNamespace(request_id=request, finished=finished,
                                           outputs=[SimpleNamespace(token_ids=tuple(done))]))
                if finished:
                    del self.requests[request]
            return out

    vllm = types.ModuleType("vllm")
    vllm.EngineArgs = lambda **kwargs: SimpleNamespace(**kwargs)
    vllm.LLMEngine, vllm.SamplingParams = Engine, lambda **kwargs: SimpleNamespace(**kwargs)
    processor = types.ModuleType("vllm.v1.sample.logits_processor")
    processor.BatchUpdate, processor.LogitsProcessor = object, object
    for name, module in (("vllm", vllm), ("vllm.v1", types.ModuleType("vllm.v1")),
                         ("vllm.v1.sample", types.ModuleType("vllm.v1.sample")),
                         ("vllm.v1.sample.logits_processor", processor)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(runtime_tokens, "token_limits", lambda n: (2, 40))
    from cosyvoice.runtime.vllm import VllmTokens

    script = [[5, 6, 7, 201, 9], [1, 2], [3, 3, 3, 3]]  # 201: a stop token of the tiny v2 model
    llm = load_model(model_dirs[2]).llm  # its own copy: the stage hands the backbone's layers to vLLM
    stage = VllmTokens(llm, tmp_path / "export", gpu_memory_utilization=0.3)
    args = stage.engine.args
    assert args.enable_prompt_embeds and args.skip_tokenizer_init and (tmp_path / "export" / "config.json").exists()
    assert args.logits_processors[0].__name__ == "RasLogitsProcessor" and len(llm.llm.decoder.layers) == 0
    empty = torch.zeros(0, dtype=torch.long)
    inputs = ModeInputs(empty, torch.tensor([4, 5]), None, empty, torch.zeros(1, 0, 80), torch.ones(1, 192))
    sessions = [Session(inputs, torch.tensor([10, 11, 12]), lambda item: None, seed=7) for _ in script]
    for session in sessions:
        stage.add(session)
    prompt, params, _, _ = stage.engine.requests["cosyvoice-0"]
    assert prompt["prompt_embeds"].dtype == torch.bfloat16 and prompt["prompt_embeds"].shape == (1 + 3 + 1 + 2, 64)
    assert (params.min_tokens, params.max_tokens, params.seed, params.extra_args) == (2, 40, 7, {MIN_LEN_ARG: 2})
    assert params.stop_token_ids == list(range(200, 203))
    got = {i: [] for i in range(3)}
    for step in range(5):
        if step == 2:
            stage.remove(sessions[2])
        for session, token in stage.step():
            got[sessions.index(session)].append(token)
    assert got == {0: [5, 6, 7, None], 1: [1, 2, None], 2: [3, 3]}
    assert stage.engine.aborted == ["cosyvoice-2"] and stage.active == 0
