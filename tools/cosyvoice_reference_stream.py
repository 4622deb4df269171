"""Time the reference implementation's streaming synthesis, for bench/engine.py to compare against.

Runs in the isolated reference venv (see tools/cosyvoice_reference_venv.sh), never in the gateway's:

    .refvenv/bin/python tools/cosyvoice_reference_stream.py --inputs INPUTS.pt

INPUTS.pt (written by bench/engine.py) names a v2 model directory and holds,
per request, exactly the model inputs the gateway's engine uses (text and
prompt-text token ids, prompt speech tokens, prompt mel, x-vector), the number
of speech tokens to force (a random-weight model never stops on its own) and
the torch thread count. The script loads the model, prints ``ready`` and then
serves commands, one JSON line each on stdin (``{"requests": [0, 1, 2, 3]}``):
it starts those requests at once, each in its own thread, the way upstream
serves concurrent requests (``CosyVoice2Model.tts(stream=True)``: an LLM
thread per request, 0.1 s polling, every chunk's flow recomputed from the
first token), and answers one JSON line: per stream the request start, every
chunk's arrival and its samples, on a shared monotonic clock. The benchmark
keeps it waiting between its own runs, so both are timed under the same load.

The upstream code is used as packaged (PyPI ``cosyvoice-minicpmo``). Two
things are set from outside it: the Qwen2 backbone is built from its
config.json (its weights come from llm.pt; a full-size random directory has
no safetensors), and the stop tokens are masked with the token count as the
maximum length, so every request makes exactly the forced number of tokens.
This script must be run as a file: its folder, not the repository root,
heads ``sys.path``, so ``import cosyvoice`` finds upstream's package.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch


def build(model_dir: Path):
    import transformers
    from hyperpyyaml import load_hyperpyyaml

    def from_config(path, *args, **kwargs):
        return transformers.Qwen2ForCausalLM(transformers.AutoConfig.from_pretrained(path))

    transformers.Qwen2ForCausalLM.from_pretrained = from_config
    with open(model_dir / "cosyvoice2.yaml", encoding="utf-8") as f:
        config = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(model_dir / "CosyVoice-BlankEN")})
    for key in ("llm", "flow", "hift"):
        state = torch.load(model_dir / f"{key}.pt", map_location="cpu", weights_only=True)
        config[key].load_state_dict(state, strict=True)
        config[key].eval()
    from cosyvoice.cli.model import CosyVoice2Model

    model = CosyVoice2Model(config["llm"], config["flow"], config["hift"], False)
    model.llm = config["llm"]  # the packaged CosyVoice2Model leaves this assignment commented out
    return model


def force_tokens(llm, count: int) -> None:
    """Exactly ``count`` speech tokens per request: stop tokens never drawn, ``count`` the maximum."""
    inference, sampling_ids = llm.inference, llm.sampling_ids
    stops = llm.speech_token_size

    def forced_inference(*args, **kwargs):
        text_len = int(kwargs["text_len"])
        ratio = (count + 0.5) / text_len
        return inference(*args, **{**kwargs, "max_token_text_ratio": ratio, "min_token_text_ratio": 0})

    def masked_sampling(scores, decoded, sampling, ignore_eos=True):
        scores = scores.clone()
        scores[stops:] = -float("inf")
        return sampling_ids(scores, decoded, sampling, ignore_eos)

    llm.inference, llm.sampling_ids = forced_inference, masked_sampling


def stream(model, request: dict, record: dict, start: threading.Event) -> None:
    start.wait()
    record["start"] = time.monotonic()
    chunks = record["chunks"]
    for out in model.tts(
        text=request["text"].view(1, -1), flow_embedding=request["embedding"], llm_embedding=torch.zeros(0, 192),
        prompt_text=request["prompt_text"].view(1, -1), llm_prompt_speech_token=request["prompt_tokens"].view(1, -1),
        flow_prompt_speech_token=request["prompt_tokens"].view(1, -1), prompt_speech_feat=request["prompt_feat"],
        stream=True,
    ):
        chunks.append([time.monotonic(), int(out["tts_speech"].shape[1])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True)
    args = parser.parse_args()
    inputs = torch.load(args.inputs, weights_only=False)
    torch.set_num_threads(inputs["threads"])
    torch.set_grad_enabled(False)
    model = build(Path(inputs["model_dir"]))
    force_tokens(model.llm, inputs["tokens"])
    requests = inputs["requests"]
    warm = {"chunks": []}
    stream(model, requests[0], warm, _set(threading.Event()))  # lazy initialization, off the clock
    print("ready", flush=True)
    for line in sys.stdin:
        chosen = json.loads(line)["requests"]
        records = [{"chunks": []} for _ in chosen]
        start = threading.Event()
        threads = [
            threading.Thread(target=stream, args=(model, requests[i], record, start))
            for i, record in zip(chosen, records)
        ]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join()
        print(json.dumps({"streams": records}), flush=True)


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


if __name__ == "__main__":
    sys.exit(main())
