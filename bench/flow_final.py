"""What the last segment of a streamed utterance costs the flow.

Upstream renders a streamed utterance's last segment by recomputing [prompt |
every token] with full attention (no chunk masks), and so does the engine.
This times that pass against what rendering only the last segment on the
carried chunk-masked state would cost, and against one steady-state 25-token
chunk, for random-weight v2 flows (tiny, and CosyVoice2-0.5B's shapes) and
the tiny v3 flow, in float32 on one torch thread (the engine's render worker).

    .venv/bin/python bench/flow_final.py [--sizes v2-tiny,v3-tiny,v2-full] [--prompt 125] [--speech 125,250,500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from cosyvoice.model import loader  # noqa: E402
from cosyvoice.model.flow import fixed_noise  # noqa: E402
from cosyvoice.model.yaml import load_config  # noqa: E402
from tools.make_cosyvoice_model import perturb, render_yaml  # noqa: E402

CHUNK, LOOKAHEAD, LAST = 25, 3, 40  # tokens: attention chunk, lookahead, a typical last segment (< a hop + 3)


def build_flow(version: str, size: str) -> torch.nn.Module:
    """The flow alone (no LLM or vocoder), from the generator's YAML, with perturbed random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / loader.YAML_FILES[int(version[1])]
        path.write_text(render_yaml(version, size), encoding="utf-8")
        config = load_config(path, overrides={"qwen_pretrain_path": tmp})
        flow = loader.build_flow(config, int(version[1]), path).eval()
    perturb(flow, torch.Generator().manual_seed(0))
    return flow


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one untimed call)."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def bench(flow, noise, prompt: int, speech: int, repeat: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    vocab = flow.input_embedding.num_embeddings
    positions = torch.randint(0, vocab, (prompt + speech,), generator=gen)
    feat = torch.randn(1, 2 * prompt, 80, generator=gen) - 5
    embedding = torch.randn(1, 192, generator=gen)
    total = prompt + speech
    boundary = (total - LAST) // CHUNK * CHUNK  # the last whole chunk before the last segment
    session = flow.begin(feat, embedding, streaming=True)
    while session.tokens + CHUNK <= boundary - CHUNK:  # stream up to one chunk before the boundary
        end = session.tokens + CHUNK
        flow.encode(session, positions[session.tokens : end], positions[end : end + LOOKAHEAD])
        flow.render([session], noise)
    before = session.snapshot()

    def one_chunk():
        s = before.fork()
        end = s.tokens + CHUNK
        flow.encode(s, positions[s.tokens : end], positions[end : end + LOOKAHEAD])
        flow.render([s], noise)

    flow.encode(session, positions[session.tokens : boundary], positions[boundary : boundary + LOOKAHEAD])
    flow.render([session], noise)
    at_boundary = session.snapshot()

    def masked_last():
        s = at_boundary.fork()
        flow.encode(s, positions[s.tokens :], None)
        flow.render([s], noise)

    def unmasked_pass():
        s = at_boundary.unmasked()
        flow.encode(s, positions, None)
        flow.render([s], noise)

    with torch.inference_mode():
        return {
            "chunk": timed(one_chunk, repeat),
            "masked_last": timed(masked_last, repeat),
            "unmasked": timed(unmasked_pass, repeat),
            "last_tokens": total - boundary,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="v2-tiny,v3-tiny,v2-full")
    parser.add_argument("--prompt", type=int, default=125, help="prompt tokens (25 per second)")
    parser.add_argument("--speech", default="125,250,500", help="speech tokens of the utterance")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    noise = fixed_noise()
    print(f"torch {torch.__version__}, 1 thread, float32; prompt {args.prompt} tokens ({args.prompt / 25:.0f} s)")
    for name in args.sizes.split(","):
        version, size = name.split("-")
        flow = build_flow(version, size)
        for speech in map(int, args.speech.split(",")):
            r = bench(flow, noise, args.prompt, speech, args.repeat)
            extra = r["unmasked"] - r["masked_last"]
            print(f"{name}: {speech / 25:4.0f} s of speech: unmasked last pass {r['unmasked'] * 1e3:7.1f} ms, "
                  f"the last {r['last_tokens']} tokens on the chunk-masked state {r['masked_last'] * 1e3:7.1f} ms "
                  f"(+{extra * 1e3:.1f} ms = {extra / r['chunk']:.1f} chunks), one 25-token chunk "
                  f"{r['chunk'] * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
