"""The tiny test checkpoints on a device against the CPU: greedy tokens, mel and audio.

    .venv/bin/python bench/cuda_check.py [--device cuda] [--dtypes float32,bfloat16] [--json PATH]

For v2 and v3 (the tiny models the tests make, tools/make_cosyvoice_model.py)
and each precision, the same inputs go through the CPU and the device, in that
precision as the engine applies it (the LLM's weights converted, the flow
under autocast):

* greedy decoding, one sequence on the incremental path, then three at once in
  a batch of each KV-cache kind (dynamic and static) on the device;
* the streaming flow's mel for four 25-token chunks (as tests/cosyvoice's
  bfloat16 test runs it);
* a whole streamed session through the runtime's renderer (hop schedule, flow,
  vocoder) on the CPU's greedy tokens.

float32 runs with TF32 off (PyTorch leaves it on for cuDNN convolutions), so that
it checks the code, not the format. Prints one line per check and writes them
all to ``--json``; exits 1 if any fails. ``--device cpu`` rehearses the script
(it then compares the CPU with itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cosyvoice.model.loader import Components, load_model  # noqa: E402
from cosyvoice.model.pipeline import ModeInputs, fixed_draws  # noqa: E402
from cosyvoice.runtime.render import FlowRenderer, flow_precision  # noqa: E402
from cosyvoice.runtime.schedule import HopSchedule  # noqa: E402
from cosyvoice.runtime.session import Session  # noqa: E402
from tools.make_cosyvoice_model import make_model  # noqa: E402

# Relative RMS of the device's mel/audio against the CPU's. float32: both round each operation at
# ~1e-7 in another order; ten solver steps and a deep vocoder amplify that to ~1e-6, so 1e-4 leaves
# room and still catches a wrong kernel (a dropped term moves it by 1e-2 or more). bfloat16 keeps 8
# bits of mantissa (~0.4% per rounding): the flow moves ~0.7% from float32 on each side (measured
# on the CPU), so two sides differ by up to ~1.5%; 3% is the bound tests/cosyvoice allow for one.
RELATIVE = {"float32": 1e-4, "bfloat16": 3e-2}
# Greedy tokens may part only at a near tie: where the CPU's log-probabilities of the two choices are
# closer than the precision's rounding of them (float32: ~1e-6 of values ~5; bfloat16: ~2e-2).
TIE = {"float32": 1e-4, "bfloat16": 5e-2}
TOKENS = 60  # per sequence (stop tokens are barred until then: min_len is twice text_len)


@dataclass
class Check:
    generation: int
    dtype: str
    name: str
    ok: bool
    detail: str


def inputs(seed: int) -> tuple[torch.Tensor, ModeInputs]:
    """Text ids and a zero-shot prompt (20 speech tokens, 40 mel frames, an x-vector)."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 1000, (12,), generator=gen)
    speech = torch.randint(0, 200, (20,), generator=gen)
    feat = torch.randn(1, 40, 80, generator=gen) - 5
    embedding = torch.randn(1, 192, generator=gen)
    return text, ModeInputs(torch.randint(0, 1000, (6,), generator=gen), speech, embedding, speech, feat, embedding)


def on(prompt: ModeInputs, device: str) -> ModeInputs:
    values = (getattr(prompt, f.name) for f in fields(prompt))
    return ModeInputs(*(None if t is None else t.to(device) for t in values))


def greedy(c: Components, text: torch.Tensor, prompt: ModeInputs) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens on the incremental path, and the log-probabilities each was chosen from."""
    lm = c.llm
    state = lm.start(lm.prompt(text, prompt.prompt_text, prompt.llm_speech, prompt.llm_embedding), text_len=TOKENS // 2, seed=None)
    tokens, rows = [], []
    while len(tokens) < TOKENS:
        rows.append(state.logp.float().cpu())
        token = lm.choose(state, greedy=True)
        if token in lm.stop_tokens:
            break
        lm.advance(state, token)
        tokens.append(token)
    return tokens, rows


def batched(c: Components, cases: list[tuple[torch.Tensor, ModeInputs]], static: bool) -> list[list[int]]:
    lm = c.llm
    batch = lm.batch(static=static)
    states = []
    for text, prompt in cases:
        states.append(lm.start(lm.prompt(text, prompt.prompt_text, prompt.llm_speech, prompt.llm_embedding),
                               text_len=TOKENS // 2, seed=None))
        batch.add(states[-1])
    while batch.states:
        fed = {}
        for state in list(batch.states):
            token = lm.choose(state, greedy=True)
            if token in lm.stop_tokens or len(state.tokens) >= TOKENS:
                batch.remove(state)
            else:
                fed[id(state)] = token
        batch.advance(fed)
    return [s.tokens for s in states]


def parting(cpu: tuple[list[int], list[torch.Tensor]], other: list[int], tie: float) -> tuple[bool, str]:
    """Whether ``other`` equals the CPU's greedy tokens, or parts from them only at a near tie."""
    tokens, rows = cpu
    if other == tokens:
        return True, f"{len(tokens)} tokens identical"
    step = next((i for i, (a, b) in enumerate(zip(tokens, other)) if a != b), min(len(tokens), len(other)))
    if step >= len(rows) or step >= len(other):
        return False, f"lengths {len(tokens)} vs {len(other)}"
    gap = float(rows[step][tokens[step]] - rows[step][other[step]])
    return gap < tie, f"part at token {step} of {len(tokens)}, the CPU's log-probability gap there {gap:.2e}"


def mel(c: Components, prompt: ModeInputs, tokens: torch.Tensor, precision: torch.dtype) -> torch.Tensor:
    device = c.noise.device
    positions = torch.cat([prompt.flow_speech, tokens]).to(device)
    out = []
    with torch.inference_mode(), flow_precision(precision, device):
        state = c.flow.begin(prompt.flow_feat.to(device), prompt.flow_embedding.to(device), streaming=True)
        for end in (25, 50, 75, 100):
            final = end == 100
            c.flow.encode(state, positions[state.tokens : end], None if final else positions[end : end + 3])
            out.append(c.flow.render([state], c.noise)[0].float().cpu())
    return torch.cat(out, dim=-1)


def audio(c: Components, text: torch.Tensor, prompt: ModeInputs, tokens: list[int], precision: torch.dtype) -> np.ndarray:
    """A streamed session through the renderer, all of its tokens known."""
    renderer = FlowRenderer(c, HopSchedule(c.flow.chunk_tokens, 15, 100), fixed_draws(c.hift) if c.generation == 3 else None,
                            None, precision)
    session = Session(prompt, text, lambda item: None, seed=1, generation=c.generation, tokens=list(tokens), llm_done=True)
    chunks = []
    with torch.inference_mode():
        renderer.open(session)
        while renderer.next_chunk(session) is not None:
            chunks += renderer.render([session])
    return np.concatenate(chunks)


def relative(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm()) if a.shape == b.shape else float("inf")


def check_generation(directory: Path, generation: int, dtype: str, device: str) -> list[Check]:
    precision = getattr(torch, dtype)
    sides = {}
    for where in ("cpu", device):
        c = load_model(directory, where)
        if precision != torch.float32:
            c.llm.to(precision)  # as the engine does
        sides[where] = c
    cpu, dev = sides["cpu"], sides[device]
    checks = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(generation, dtype, name, ok, detail))
        print(f"v{generation} {dtype:>8} {name:<24} {'ok' if ok else 'FAIL'}  {detail}", flush=True)

    cases = [inputs(seed) for seed in (1, 2, 3)]
    with torch.inference_mode():
        reference = [greedy(cpu, text, prompt) for text, prompt in cases]
        single = [greedy(dev, text.to(device), on(prompt, device))[0] for text, prompt in cases]
        for i, (ref, got) in enumerate(zip(reference, single)):
            add(f"greedy tokens #{i}", *parting(ref, got, TIE[dtype]))
        for kind in (False, True):
            together = batched(dev, [(t.to(device), on(p, device)) for t, p in cases], static=kind)
            same = together == single
            add(f"batched ({'static' if kind else 'dynamic'})", same,
                "the three sessions' tokens equal one at a time" if same else f"{together} vs {single}")
    text, prompt = cases[0]
    forced = torch.randint(0, 200, (80,), generator=torch.Generator().manual_seed(4))
    got, want = mel(dev, prompt, forced, precision), mel(cpu, prompt, forced, precision)
    error = relative(got, want)
    add("flow mel", error < RELATIVE[dtype], f"relative RMS {error:.2e} (bound {RELATIVE[dtype]:.0e})")
    tokens = reference[0][0]
    got, want = audio(dev, text.to(device), on(prompt, device), tokens, precision), audio(cpu, text, prompt, tokens, precision)
    error = relative(got, want)
    add("streamed audio", error < RELATIVE[dtype],
        f"relative RMS {error:.2e} over {len(want) / 24000:.2f} s (bound {RELATIVE[dtype]:.0e})")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--json", help="write the checks here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the tiny models: one thread is fastest, and the CPU side is only the reference
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"device: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        for generation in (2, 3):
            directory = make_model(Path(tmp) / f"tiny_v{generation}", f"v{generation}", "tiny", seed=0)
            for dtype in args.dtypes.split(","):
                checks += check_generation(directory, generation, dtype, args.device)
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in checks], indent=2), encoding="utf-8")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
