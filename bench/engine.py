"""The CosyVoice engine against the reference implementation's streaming, side by side.

    scripts/setup.sh cosyvoice,bench && tools/cosyvoice_reference_venv.sh   # once
    .venv/bin/python bench/engine.py [--sizes tiny,full] [--concurrency 1,4] [--tokens-tiny 100]
                                     [--tokens-full 50] [--search-tiny 64] [--full-dir DIR]

For each model size (``tiny``: the test checkpoints; ``full``: random weights
with CosyVoice2-0.5B's exact shapes, made by tools/make_cosyvoice_model.py if
``--full-dir`` does not hold one), this runs zero-shot streaming requests
(four saved voices with 2.0 to 3.2 s prompts, four short texts, a forced
number of speech tokens since a random-weight model never stops) through the
gateway's engine in this process, and the same inputs through upstream's
streaming in the isolated reference venv (tools/cosyvoice_reference_stream.py,
a separate process that waits while ours runs). A level of concurrency N runs
rounds of N streams started at once, ours and theirs alternating round by
round so that both see the same background load; every voice is used once per
repeat.

Per implementation and concurrency it prints the time to first audio (p50 and
p95), the real-time factor per stream, the aggregate throughput (seconds of
audio per wall second) and the underrun (a listener who starts playing
``--lead`` seconds after the first chunk, as the gateway's sessions do), then
our/their ratios. It also searches the largest number of concurrent streams
with no underrun, and records the event loop's lag while our engine works.
The machine's load average is printed: on a shared machine, re-run when it is high.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cosyvoice.runtime.tokens as runtime_tokens  # noqa: E402
from cosyvoice.engine import Audio, Mode, SavedVoice, SynthesisRequest  # noqa: E402
from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions  # noqa: E402
from cosyvoice.text import ClauseOptions  # noqa: E402
from tools.make_cosyvoice_model import make_model  # noqa: E402

TEXTS = [
    "Hello there, this is a short test of streaming speech.",
    "The weather today is bright and clear with a light breeze.",
    "Please hold on while I look up your order for you.",
    "Thank you for calling, how can I help you this morning?",
]
# Saved voices' prompt lengths: 50, 60, 70 and 80 speech tokens, which end 0, 15, 5 and 20 tokens
# short of the flow's next 25-token boundary (what the first chunk must reach).
VOICES = (2.0, 2.4, 2.8, 3.2)
PROMPT_TEXT = "This is the prompt recording for the benchmark."
RATE = 24000
NO_SPLIT = ClauseOptions(first_clause_chars=10_000, clause_chars=10_000, max_chars=10_000)


def prompt_audio(seconds: float, rate: int = 16000) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 1.5 * t)
    wave = sum(0.3 / k * np.sin(2 * np.pi * k * np.cumsum(pitch) / rate) for k in range(1, 6))
    wave = wave + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return Audio(wave.astype(np.float32), rate)


@dataclass
class Stream:
    start: float
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, samples)

    @property
    def first(self) -> float:
        return self.chunks[0][0] - self.start

    @property
    def audio(self) -> float:
        return sum(n for _, n in self.chunks) / RATE

    @property
    def end(self) -> float:
        return self.chunks[-1][0]

    def gaps(self, lead: float) -> list[float]:
        """Each silence (seconds) a listener who starts ``lead`` after the first chunk hears."""
        gaps, playing_until = [], self.chunks[0][0] + lead
        for arrival, samples in self.chunks:
            if arrival > playing_until:
                gaps.append(arrival - playing_until)
                playing_until = arrival
            playing_until += samples / RATE
        return gaps

    def underrun(self, lead: float) -> float:
        """Seconds of silence in all."""
        return sum(self.gaps(lead))


@dataclass
class Level:
    """The runs at one concurrency: rounds of that many streams started at once."""

    concurrency: int
    rounds: list[list[Stream]] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)  # GPU bytes per stream, per round (CUDA only)
    cpu: float = 0.0  # this process's CPU seconds (all threads) over the rounds
    error: str | None = None  # why a round failed (the level stops there: out of GPU memory, say)

    def summary(self, lead: float) -> dict:
        streams = [s for r in self.rounds for s in r]
        if not streams:
            return {"streams": 0, "error": self.error}
        firsts = sorted(s.first for s in streams)
        wall = sum(max(s.end for s in r) - min(s.start for s in r) for r in self.rounds)
        out = {
            "streams": len(streams),
            "first_p50": percentile(firsts, 50),
            "first_p95": percentile(firsts, 95),
            "rtf": statistics.median((s.end - s.start) / s.audio for s in streams),
            "throughput": sum(s.audio for s in streams) / wall,
            "underrun": max(s.underrun(lead) for s in streams),
            # continuity: the share of streams whose longest silence stays under 100 ms
            "continuity": sum(max(s.gaps(lead), default=0.0) < 0.1 for s in streams) / len(streams),
            "load": statistics.mean(self.load) if self.load else None,
            "gpu_mb_per_stream": max(self.memory) / 2**20 if self.memory else None,
            # core-seconds per second of audio: this process's CPU time over the audio it made (ours only)
            "core_s_per_audio_s": self.cpu / sum(s.audio for s in streams) if self.cpu else None,
            "error": self.error,
        }
        if self.lag:
            out.update(lag_p50=percentile(self.lag, 50), lag_p99=percentile(self.lag, 99), lag_max=max(self.lag))
        return out


def rounds(concurrency: int, repeat: int) -> list[list[int]]:
    """Request indices per round: every voice at least once per repeat."""
    count = max(1, len(VOICES) // concurrency) * repeat
    return [[(r * concurrency + j) % len(VOICES) for j in range(concurrency)] for r in range(count)]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    rank = (len(values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return values[low] + (values[high] - values[low]) * (rank - low)


# -- ours ---------------------------------------------------------------------------
class Ours:
    def __init__(self, model_dir: Path, args: argparse.Namespace, tokens: int) -> None:
        runtime_tokens.token_limits = lambda text_len: (tokens, tokens)  # forced: random weights never stop
        options = CosyVoiceOptions(
            str(model_dir), device=args.device, normalize_text=False, threads=args.threads,
            first_hop=args.first_hop, max_batch=args.max_batch, prompt_cache_mb=args.prompt_cache_mb, dtype=args.dtype,
            kv_cache=args.kv_cache,
        )
        self.engine = CosyVoiceEngine(options, clause_options=NO_SPLIT)
        self.voices: list[SavedVoice] = []

    async def start(self) -> None:
        await self.engine.start()
        loop = asyncio.get_running_loop()
        for i, seconds in enumerate(VOICES):
            voice = SavedVoice(id=f"bench-{i}", prompt_audio=prompt_audio(seconds), prompt_text=PROMPT_TEXT)
            features = await loop.run_in_executor(self.engine._executor, self.engine.prompt_features, voice.prompt_audio)
            voice.remember(self.engine.feature_key, features)
            self.voices.append(voice)
        for i in range(len(VOICES)):  # warm: lazy initialization, and each saved voice seen once
            await self.run([i])

    def request(self, i: int) -> SynthesisRequest:
        return SynthesisRequest(text=TEXTS[i % len(TEXTS)], mode=Mode.ZERO_SHOT, saved_voice=self.voices[i % len(VOICES)],
                                seed=i + 1)

    async def reference_inputs(self) -> list[dict]:
        """The exact model inputs each request gets, for the reference to use."""
        loop = asyncio.get_running_loop()
        out = []
        for i in range(len(VOICES)):
            prompt, texts = await loop.run_in_executor(self.engine._executor, self.engine._prepare, self.request(i))
            (text,) = texts
            out.append({
                "text": text.cpu(), "prompt_text": prompt.prompt_text.cpu(), "prompt_tokens": prompt.flow_speech.cpu(),
                "prompt_feat": prompt.flow_feat.cpu(), "embedding": prompt.flow_embedding.cpu(),
            })
        return out

    async def run(self, requests: list[int], lags: list[float] | None = None) -> list[Stream]:
        running = True

        async def ticker() -> None:
            while running:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                if lags is not None:
                    lags.append(time.perf_counter() - before - 0.01)

        async def one(i: int) -> Stream:
            record = Stream(time.monotonic())
            async for chunk in self.engine.synthesize(self.request(i)):
                record.chunks.append((time.monotonic(), len(chunk)))
            return record

        tick = asyncio.create_task(ticker())
        streams = await asyncio.gather(*(one(i) for i in requests), return_exceptions=True)
        running = False
        await tick
        for stream in streams:  # raised once every stream has ended, so none runs on into the next round
            if isinstance(stream, BaseException):
                raise stream
        return list(streams)

    async def close(self) -> None:
        await self.engine.close()


# -- the reference -----------------------------------------------------------------
class Reference:
    """Upstream's streaming in the isolated venv, as a separate process that waits between runs."""

    def __init__(self, python: str, model_dir: Path, inputs: list[dict], tokens: int, threads: int) -> None:
        self.folder = tempfile.TemporaryDirectory()
        path = Path(self.folder.name) / "inputs.pt"
        torch.save({"model_dir": str(model_dir), "requests": inputs, "tokens": tokens, "threads": threads}, path)
        self.log = open(Path(self.folder.name) / "reference.log", "w+", encoding="utf-8")
        script = ROOT / "tools" / "cosyvoice_reference_stream.py"
        self.process = subprocess.Popen(
            [python, str(script), "--inputs", str(path)], cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True,
        )

    async def _line(self) -> str:
        line = await asyncio.get_running_loop().run_in_executor(None, self.process.stdout.readline)
        if not line:
            self.log.seek(0)
            raise SystemExit(f"the reference run failed:\n{self.log.read()[-3000:]}")
        return line

    async def ready(self) -> None:
        while (await self._line()).strip() != "ready":
            pass

    async def run(self, requests: list[int]) -> list[Stream]:
        self.process.stdin.write(json.dumps({"requests": requests}) + "\n")
        self.process.stdin.flush()
        while not (line := await self._line()).startswith("{"):
            pass
        return [Stream(s["start"], [tuple(c) for c in s["chunks"]]) for s in json.loads(line)["streams"]]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()
        self.folder.cleanup()


# -- the run ---------------------------------------------------------------------------
async def search(
    ours: Ours, most: int, lead: float, known: dict[int, float], seconds: float
) -> tuple[int, dict[int, float], bool]:
    """The largest N in 1 .. ``most`` whose streams all play without underrun, doubling from the
    largest clean level in ``known`` (N -> the underrun the levels measured), then bisecting; and
    whether it finished within ``seconds`` (0: no limit; else what it found is a lower bound)."""
    seen: dict[int, float] = dict(known)
    deadline = time.monotonic() + seconds if seconds else math.inf

    async def clean(n: int) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError
        if n not in seen:
            try:
                streams = await ours.run([i % len(VOICES) for i in range(n)])
                seen[n] = max(s.underrun(lead) for s in streams)
            except Exception as error:  # noqa: BLE001 - out of GPU memory, say: N is too many
                print(f"search: {n} streams failed: {error}", flush=True)
                seen[n] = math.inf
        return seen[n] == 0.0

    good = max((n for n, u in known.items() if u == 0.0 and n <= most), default=0)
    bad = min((n for n, u in known.items() if u > 0.0 and n > good), default=None)
    n = max(1, 2 * good)
    try:
        while bad is None and n <= most:
            if not await clean(n):
                bad = n
                break
            good, n = n, 2 * n
        while bad is not None and bad - good > 1:
            middle = (good + bad) // 2
            if await clean(middle):
                good = middle
            else:
                bad = middle
    except TimeoutError:
        return good, seen, False
    return good, seen, True


async def bench_size(size: str, model_dir: Path, tokens: int, args: argparse.Namespace) -> dict:
    levels = [int(c) for c in args.concurrency.split(",")]
    ours = Ours(model_dir, args, tokens)
    await ours.start()
    reference = None
    if args.reference_python:
        reference = Reference(args.reference_python, model_dir, await ours.reference_inputs(), tokens, args.threads)
        await reference.ready()
    mine = {c: Level(c) for c in levels}
    theirs = {c: Level(c) for c in levels}
    cuda = torch.cuda.is_available() and ours.engine.capabilities.gpu
    for c in levels:  # ours and theirs alternate round by round, so both see the same background load
        for requests in rounds(c, args.repeat):
            mine[c].load.append(os.getloadavg()[0])
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                held = torch.cuda.memory_allocated()
            cpu = time.process_time()
            try:
                mine[c].rounds.append(await ours.run(requests, mine[c].lag))
            except Exception as error:  # noqa: BLE001 - recorded; the larger levels still get their try
                mine[c].error = f"{type(error).__name__}: {error}"
                if cuda:
                    torch.cuda.empty_cache()
                break
            mine[c].cpu += time.process_time() - cpu
            if cuda:
                mine[c].memory.append((torch.cuda.max_memory_allocated() - held) / c)
            if reference is not None:
                theirs[c].load.append(os.getloadavg()[0])
                theirs[c].rounds.append(await reference.run(requests))
        print(f"level c={c}: {json.dumps(mine[c].summary(args.lead))}", flush=True)  # kept if a later step is cut off
    if reference is not None:
        reference.close()
    stats = ours.engine.scheduler.stats
    most = args.search_tiny if size == "tiny" else args.search_full
    known = {c: max((s.underrun(args.lead) for r in lvl.rounds for s in r), default=math.inf) if lvl.error is None
             else math.inf for c, lvl in mine.items()}
    largest, tried, complete = (await search(ours, most, args.lead, known, args.search_seconds)) if most else (None, {}, True)
    await ours.close()
    result = {
        "size": size, "tokens": tokens, "device": device_name(ours.engine), "dtype": str(ours.engine.precision),
        "kv_cache": args.kv_cache, "max_batch": args.max_batch, "torch": torch.__version__,
        "ours": {c: lvl.summary(args.lead) for c, lvl in mine.items()},
        "largest_clean_n": largest, "search": tried, "search_complete": complete, "batches": {
            "tokens_per_step": stats.tokens / max(1, stats.token_steps), "largest_token_batch": stats.largest_token_batch,
            "sessions_per_render": stats.rendered_sessions / max(1, stats.render_calls),
            "largest_render_batch": stats.largest_render_batch,
        },
    }
    if reference is not None:
        result["theirs"] = {c: lvl.summary(args.lead) for c, lvl in theirs.items()}
    return result


def device_name(engine: CosyVoiceEngine) -> str:
    if engine.capabilities.gpu:
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})"


def report(result: dict) -> None:
    print(f"\n== {result['size']} checkpoint, {result['tokens']} forced speech tokens "
          f"({result['tokens'] / 25:.1f} s of audio per stream), voices of {', '.join(map(str, VOICES))} s, "
          f"{result['device']}, {result['dtype']}, kv_cache {result['kv_cache']} ==")
    head = (f"{'':>5} {'':>10} {'first p50':>10} {'first p95':>10} {'RTF p50':>8} {'audio s/s':>10} {'underrun':>9}"
            f" {'continuity':>10} {'load':>5}")
    print(head)
    for c, ours in result["ours"].items():
        if ours["error"]:
            print(f"{'c=' + str(c):>5} {'ours':>10} failed after {ours['streams']} streams: {ours['error']}")
            if not ours["streams"]:
                continue
        rows = [("ours", ours)]
        theirs = result.get("theirs", {}).get(c)
        if theirs:
            rows.append(("reference", theirs))
        for name, s in rows:
            continuity = f"{s['continuity']:>10.0%}" if "continuity" in s else f"{'':>10}"
            print(f"{'c=' + str(c):>5} {name:>10} {s['first_p50']:>9.3f}s {s['first_p95']:>9.3f}s {s['rtf']:>8.2f} "
                  f"{s['throughput']:>10.3f} {s['underrun']:>8.2f}s {continuity} {s['load']:>5.1f}")
        if theirs:
            print(f"{'':>5} {'ours/ref':>10} {ours['first_p50'] / theirs['first_p50']:>10.2f} "
                  f"{ours['first_p95'] / theirs['first_p95']:>10.2f} {ours['rtf'] / theirs['rtf']:>8.2f} "
                  f"{ours['throughput'] / theirs['throughput']:>10.2f}")
        print(f"{'':>5} event loop lag (ours): p50 {ours['lag_p50'] * 1000:.1f} ms, p99 {ours['lag_p99'] * 1000:.1f} ms, "
              f"max {ours['lag_max'] * 1000:.1f} ms")
        if ours.get("core_s_per_audio_s"):
            print(f"{'':>5} CPU time (ours, every thread of this process): {ours['core_s_per_audio_s']:.2f} core-seconds "
                  "per second of audio")
        if ours["gpu_mb_per_stream"] is not None:
            print(f"{'':>5} GPU memory per stream (peak over the models', ours): {ours['gpu_mb_per_stream']:.0f} MB")
    if result["largest_clean_n"] is not None:
        bound = "" if result["search_complete"] else "at least (the search ran out of time) "
        print(f"largest number of concurrent streams without underrun (ours): {bound}{result['largest_clean_n']} "
              f"(max underrun by N: {json.dumps({n: round(u, 2) for n, u in sorted(result['search'].items())})})")
    b = result["batches"]
    print(f"batching: {b['tokens_per_step']:.1f} sessions per LLM step (largest {b['largest_token_batch']}), "
          f"{b['sessions_per_render']:.2f} per flow/vocoder call (largest {b['largest_render_batch']})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,full")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per level (each covers every voice)")
    parser.add_argument("--tokens-tiny", type=int, default=100)
    parser.add_argument("--tokens-full", type=int, default=50)
    parser.add_argument("--search-tiny", type=int, default=64, help="largest N tried in the no-underrun search (0: skip)")
    parser.add_argument("--search-full", type=int, default=0)
    parser.add_argument("--search-seconds", type=float, default=0, help="stop the search then (0: no limit)")
    parser.add_argument("--full-dir", default=str(Path(tempfile.gettempdir()) / "cosyvoice-bench" / "full_v2"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for both implementations")
    parser.add_argument("--first-hop", type=int, default=CosyVoiceOptions.first_hop)
    parser.add_argument("--max-batch", type=int, default=CosyVoiceOptions.max_batch)
    parser.add_argument("--lead", type=float, default=0.1, help="seconds a listener buffers before playing")
    parser.add_argument("--dtype", default=CosyVoiceOptions.dtype, choices=("auto", "float32", "bfloat16"),
                        help="ours only: the reference computes in float32 on a CPU")
    parser.add_argument("--kv-cache", default=CosyVoiceOptions.kv_cache, choices=("dynamic", "static"))
    parser.add_argument("--prompt-cache-mb", type=int, default=CosyVoiceOptions.prompt_cache_mb)
    parser.add_argument("--reference-python", default=str(ROOT / ".refvenv" / "bin" / "python"),
                        help="the reference venv's python ('' to skip the reference)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.reference_python and not Path(args.reference_python).exists():
        raise SystemExit(f"{args.reference_python} not found: build it with tools/cosyvoice_reference_venv.sh, "
                         "or pass --reference-python ''")
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}, torch threads: {args.threads}, "
          f"device: {'cuda' if torch.cuda.is_available() and args.device != 'cpu' else 'cpu'}, ours in {args.dtype}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            if size == "tiny":
                model_dir, tokens = make_model(Path(tmp) / "tiny_v2", "v2", "tiny", seed=0), args.tokens_tiny
            else:
                model_dir, tokens = Path(args.full_dir), args.tokens_full
                if not (model_dir / "llm.pt").exists():
                    print(f"making the full-size random checkpoint in {model_dir} ...")
                    make_model(model_dir, "v2", "full", seed=0)
            result = await bench_size(size, model_dir, tokens, args)
            report(result)
            results.append(result)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
