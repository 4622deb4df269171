"""A streamed reply spoken clause by clause, and as one text-fed decoding: first audio and silences.

    .venv/bin/python bench/text_stream.py [--words-per-second 8] [--ratio 4] [--repeats 3]

An agent's reply arrives word by word (``--words-per-second``, an LLM's pace).
*Clause by clause* is what a session does without text streaming: the clause
splitter cuts complete clauses and each is one engine request, started when the
previous one's audio is all made. *Text-fed* sends every word into one
:class:`~cosyvoice.text_stream.TextStream` of a v2 model. For both it prints the
time from the first word to the first audio, and the silence a listener hears
between clauses: playback starts with the first chunk and runs in real time,
so a chunk that arrives after the audio before it has played out opens a gap.
The model is the tiny v2 test checkpoint (random weights: its audio is noise and
it never stops by itself, so both ways make ``--ratio`` speech tokens per text
token, the text-fed tail by the same cap).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cosyvoice.model.bistream as bistream  # noqa: E402
import cosyvoice.runtime.tokens as runtime_tokens  # noqa: E402
from cosyvoice.engine import Mode, SynthesisRequest  # noqa: E402
from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions  # noqa: E402
from cosyvoice.text import ClauseOptions, ClauseSplitter  # noqa: E402
from cosyvoice.text_stream import TextStream  # noqa: E402
from tools.make_cosyvoice_model import make_model  # noqa: E402

REPLY = (
    "Sure, I can help with that. Your order left the warehouse this morning, "
    "and it should reach you by Thursday afternoon. Is there anything else?"
)


@dataclass
class Listening:
    """Chunks as a listener hears them: playback starts with the first and never waits on purpose."""

    started: float
    first_audio: float | None = None
    played_until: float = 0.0
    gaps: list[float] | None = None

    def hear(self, samples: int, rate: int) -> None:
        now = time.monotonic()
        if self.first_audio is None:
            self.first_audio, self.played_until, self.gaps = now, now, []
        elif now > self.played_until:
            self.gaps.append(now - self.played_until)
        self.played_until = max(now, self.played_until) + samples / rate


async def words(rate: float) -> AsyncIterator[str]:
    for index, word in enumerate(REPLY.split(" ")):
        if index:
            await asyncio.sleep(1 / rate)
        yield word if index == 0 else " " + word


async def clause_by_clause(engine: CosyVoiceEngine, rate: float, options: ClauseOptions) -> Listening:
    listening = Listening(time.monotonic())
    clauses: asyncio.Queue[str | None] = asyncio.Queue()

    async def write() -> None:
        splitter = ClauseSplitter(options)
        async for word in words(rate):
            for clause in splitter.feed(word):
                clauses.put_nowait(clause)
        for clause in splitter.flush():
            clauses.put_nowait(clause)
        clauses.put_nowait(None)

    writer = asyncio.create_task(write())
    while (clause := await clauses.get()) is not None:
        async for chunk in engine.synthesize(SynthesisRequest(text=clause, mode=Mode.SFT, seed=7)):
            listening.hear(len(chunk), engine.capabilities.sample_rate)
    await writer
    return listening


async def text_fed(engine: CosyVoiceEngine, rate: float) -> Listening:
    listening = Listening(time.monotonic())
    text = TextStream()
    stream = None

    async def write() -> None:
        nonlocal stream
        async for word in words(rate):
            if stream is None:
                stream = engine.synthesize_text_stream(SynthesisRequest(text=word, mode=Mode.SFT, seed=7), text)
                started.set()
            else:
                text.append(word)
        text.close()

    started = asyncio.Event()
    writer = asyncio.create_task(write())
    await started.wait()
    async for chunk in stream:
        listening.hear(len(chunk), engine.capabilities.sample_rate)
    await writer
    return listening


def summary(name: str, runs: list[Listening]) -> str:
    first = statistics.median((r.first_audio - r.started) * 1000 for r in runs)
    total = statistics.median(sum(r.gaps) * 1000 for r in runs)
    longest = statistics.median(max(r.gaps, default=0.0) * 1000 for r in runs)
    count = statistics.median(len(r.gaps) for r in runs)
    return f"{name:18s} first audio {first:7.0f} ms   silences {count:4.0f}   total {total:7.0f} ms   longest {longest:6.0f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words-per-second", type=float, default=8.0)
    parser.add_argument("--ratio", type=int, default=4, help="speech tokens per text token (random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runtime_tokens.token_limits = lambda n: (args.ratio * n, args.ratio * n)  # forced: random weights never stop
    bistream.MAX_RATIO = args.ratio
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "tiny_v2", "v2", "tiny", seed=0)
        options = ClauseOptions()
        engine = CosyVoiceEngine(CosyVoiceOptions(str(model), device="cpu", threads=1), clause_options=options)
        await engine.start()
        try:
            await clause_by_clause(engine, 1000.0, options)  # warm-up
            clauses, fed = [], []
            for _ in range(args.repeats):  # alternating, so both see the same background load
                clauses.append(await clause_by_clause(engine, args.words_per_second, options))
                fed.append(await text_fed(engine, args.words_per_second))
        finally:
            await engine.close()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"tiny v2 on CPU, {args.words_per_second:g} words/s, {args.ratio} speech tokens per text token, "
          f"median of {args.repeats}, load average {load}")
    print(summary("clause by clause", clauses))
    print(summary("text-fed", fed))


if __name__ == "__main__":
    asyncio.run(main())
