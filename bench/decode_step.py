"""The batched Qwen2 decode step: exact shapes (SlotCache) against fixed shapes (StaticSlotCache).

    .venv/bin/python bench/decode_step.py [--size full|tiny] [--batches 1,3,4,8,16] [--steps 20]
                                          [--dtypes float32,bfloat16] [--device cpu] [--threads 1]

For each batch size, that many sessions (prompts of 60 to 100 positions) join a
batch of each kind, then both are stepped ``--steps`` times, the two kinds
alternating step by step so that both see the same background load. Prints the
median milliseconds per step of each and their ratio. ``full``: CosyVoice2-0.5B's
Qwen2 shapes (24 layers, hidden 896) with random weights and a small text
vocabulary (the decode step never reads it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyvoice.model.llm import Prompt, Qwen2LM  # noqa: E402
from cosyvoice.model.qwen2 import Qwen2Config  # noqa: E402
from cosyvoice.model.sampling import SamplingOptions  # noqa: E402

SHAPES = {
    "full": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, speech=6561),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, speech=200),
}


def model(size: str, dtype: torch.dtype, device: str) -> Qwen2LM:
    s = SHAPES[size]
    config = Qwen2Config(vocab_size=1024, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"])
    torch.manual_seed(0)
    lm = Qwen2LM(llm_input_size=s["hidden"], llm_output_size=s["hidden"], speech_token_size=s["speech"],
                 config=config, sampling=SamplingOptions())
    for p in lm.parameters():  # default inits are fine; keep activations in a realistic range
        p.data.normal_(0, 0.02)
    return lm.to(device=device, dtype=dtype).eval()


def bench(lm: Qwen2LM, sessions: int, steps: int, device: str) -> tuple[float, float]:
    hidden = lm.speech_embedding.embedding_dim
    dtype = lm.speech_embedding.weight.dtype
    gen = torch.Generator().manual_seed(sessions)
    batches = {static: lm.batch(static=static) for static in (False, True)}
    for batch in batches.values():
        for i in range(sessions):
            embeds = torch.randn(1, 60 + (10 * i) % 41, hidden, generator=gen).to(device=device, dtype=dtype)
            batch.add(lm.start(Prompt(embeds, 0), text_len=steps, seed=None))
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(steps + 2):  # two warm-up steps
        for static, batch in batches.items():
            started = time.perf_counter()
            batch.advance({id(s): (step * 7 + i) % 6561 % lm.speech_token_size for i, s in enumerate(batch.states)})
            if step >= 2:
                times[static].append(time.perf_counter() - started)
    return statistics.median(times[False]) * 1000, statistics.median(times[True]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,3,4,8,16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.size} Qwen2 shapes on {args.device}, {args.threads} torch thread(s), {args.steps} steps")
    print(f"{'dtype':>9} {'sessions':>8} {'exact ms':>9} {'fixed ms':>9} {'fixed/exact':>11}")
    with torch.inference_mode():
        for name in args.dtypes.split(","):
            lm = model(args.size, getattr(torch, name), args.device)
            for sessions in (int(b) for b in args.batches.split(",")):
                exact, fixed = bench(lm, sessions, args.steps, args.device)
                print(f"{name:>9} {sessions:>8} {exact:>9.2f} {fixed:>9.2f} {fixed / exact:>11.2f}", flush=True)
            del lm


if __name__ == "__main__":
    main()
