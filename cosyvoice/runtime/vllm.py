"""The language-model stage on vLLM (GPU): vLLM batches the decode steps, sampling stays ours.

vLLM serves the Qwen2 backbone of a v2/v3 model, exported in Hugging Face
form (:func:`export`) with the *speech* vocabulary as its vocabulary:
``speech_embedding`` as the input embeddings and ``llm_decoder`` as the head.
Text never enters as token ids: the torch model builds each request's prompt
embeddings exactly as for the torch stage, and vLLM takes them as
``prompt_embeds``. Every next-token distribution goes through
:class:`~cosyvoice.runtime.ras.RasRows` (installed as a vLLM logits processor by :mod:`cosyvoice.runtime.vllm_processor`):
the head's bias (v2), stop tokens barred before the minimum length, and
repetition-aware nucleus sampling in closed form
(:func:`~cosyvoice.model.sampling.ras_distribution`), so vLLM's sampler, left
at temperature 1 with no top-k/top-p of its own, draws from the distribution
the torch stage draws from (with its own random stream). The maximum length
and the stop tokens are vLLM's ``max_tokens`` and ``stop_token_ids``.

This module imports vllm only when the stage is built, and says what to install
when it is missing (the ``vllm`` extra, CUDA only).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from cosyvoice.model.llm import Qwen2LM
from cosyvoice.runtime import tokens as torch_stage
from cosyvoice.runtime.ras import BIAS_FILE, MIN_LEN_ARG, SAMPLING_FILE
from cosyvoice.runtime.session import Session


def require_vllm():
    try:
        import vllm
    except ImportError as error:
        raise RuntimeError(
            "llm_backend = 'vllm' needs the vllm package (CUDA only): pip install 'cosyvoice-gateway[vllm]', "
            "or set [cosyvoice] llm_backend = 'torch'"
        ) from error
    return vllm


def export(llm: Qwen2LM, directory: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``llm``'s backbone as a Hugging Face Qwen2ForCausalLM whose vocabulary is the speech tokens
    (unless ``directory`` already holds it; written to a temporary folder, then moved in place)."""
    from safetensors.torch import save_file

    if (directory / "config.json").exists():
        return directory
    decoder = llm.llm.decoder
    rows = llm.speech_embedding.num_embeddings
    state = {
        f"model.{key}": value for key, value in decoder.state_dict().items() if not key.startswith("embed_tokens")
    }
    state["model.embed_tokens.weight"] = llm.speech_embedding.weight
    state["lm_head.weight"] = llm.llm_decoder.weight
    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in state.items()}
    config = {**decoder.config.to_json(), "vocab_size": rows, "tie_word_embeddings": False,
              "torch_dtype": str(dtype).removeprefix("torch.")}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=directory.name, dir=directory.parent))
    try:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        if llm.llm_decoder.bias is not None:
            save_file({"bias": llm.llm_decoder.bias.detach().float().cpu().contiguous()}, str(staging / BIAS_FILE))
        sampling = {"speech_token_size": llm.speech_token_size, "options": asdict(llm.sampling)}
        (staging / SAMPLING_FILE).write_text(json.dumps(sampling), encoding="utf-8")
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


class VllmTokens:
    """The token stage (see :class:`~cosyvoice.runtime.scheduler.TokenStage`) on a vLLM engine."""

    def __init__(self, llm: Qwen2LM, directory: Path, *, gpu_memory_utilization: float) -> None:
        vllm = require_vllm()
        if not isinstance(llm, Qwen2LM):
            raise ValueError("the vLLM backend serves the Qwen2-based models (v2, v3) only")
        from cosyvoice.runtime.vllm_processor import RasLogitsProcessor

        export(llm, directory)
        args = vllm.EngineArgs(
            model=str(directory), skip_tokenizer_init=True, enable_prompt_embeds=True, dtype="bfloat16",
            gpu_memory_utilization=gpu_memory_utilization, logits_processors=[RasLogitsProcessor],
        )
        self.engine = vllm.LLMEngine.from_engine_args(args)
        self.sampling_params = vllm.SamplingParams
        self.llm = llm
        llm.llm.decoder.layers = nn.ModuleList()  # vLLM holds the backbone now; the embeddings stay for prompts
        self.stops = sorted(llm.stop_tokens)
        self.ids = itertools.count()
        self.requests: dict[str, Session] = {}
        self.sessions: dict[Session, str] = {}
        self.seen: dict[str, int] = {}

    @property
    def active(self) -> int:
        return len(self.requests)

    def add(self, session: Session) -> None:
        p = session.prompt
        embeds = self.llm.prompt(session.text, p.prompt_text, p.llm_speech, p.llm_embedding).embeds[0]
        least, most = torch_stage.token_limits(session.text.numel())  # one rule for both stages
        params = self.sampling_params(
            max_tokens=most, min_tokens=least, stop_token_ids=self.stops, seed=session.seed, detokenize=False,
            extra_args={MIN_LEN_ARG: least},
        )
        request = f"cosyvoice-{next(self.ids)}"
        self.engine.add_request(request, {"prompt_embeds": embeds.to(torch.bfloat16)}, params)
        self.requests[request], self.sessions[session], self.seen[request] = session, request, 0

    def remove(self, session: Session) -> None:
        request = self.sessions.pop(session, None)
        if request is not None:
            self.engine.abort_request([request])
            self.requests.pop(request, None)
            self.seen.pop(request, None)

    def step(self) -> list[tuple[Session, int | None]]:
        out: list[tuple[Session, int | None]] = []
        for result in self.engine.step():
            session = self.requests.get(result.request_id)
            if session is None:
                continue
            tokens = list(result.outputs[0].token_ids)
            new, self.seen[result.request_id] = tokens[self.seen[result.request_id] :], len(tokens)
            ended = result.finished
            for token in new:
                if token in self.llm.stop_tokens:
                    ended = True
                    break
                out.append((session, token))
            if ended:
                out.append((session, None))
                self.sessions.pop(session, None)
                self.requests.pop(result.request_id, None)
                self.seen.pop(result.request_id, None)
        return out
