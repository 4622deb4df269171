"""The replay engine: pre-rendered speech served as if synthesized, for load tests and benchmarks.

It answers every request with audio cut from one recording, as long as the
text would take to say (``chars_per_second``, divided by ``speed``), in
``chunk_seconds`` chunks, at once. With no model cost of its own, it shows
what the gateway itself costs per call: pacing, resampling, encoding, I/O.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np

from cosyvoice.engine import Capabilities, Emit, Engine, Mode, SynthesisRequest

VOICE = "replay"


class ReplayEngine(Engine):
    def __init__(
        self,
        recording: str | Path,
        *,
        chars_per_second: float = 14.0,
        chunk_seconds: float = 0.2,
        max_text_chars: int = 4096,
    ) -> None:
        super().__init__(max_text_chars=max_text_chars)
        self.path = Path(recording)
        with wave.open(str(self.path)) as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise ValueError(f"{self.path}: the replay recording must be 16-bit mono WAV")
            rate = wav.getframerate()
            self._audio = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768.0
        if not len(self._audio):
            raise ValueError(f"{self.path}: the replay recording is empty")
        self.chars_per_second = chars_per_second
        self.chunk = max(1, int(rate * chunk_seconds))
        self._capabilities = Capabilities(
            engine="replay", model=f"replay:{self.path.name}", modes=frozenset({Mode.SFT}),
            sample_rate=rate, voices=(VOICE,), default_voice=VOICE,
        )  # fmt: skip

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        self._ready = True

    async def close(self) -> None:
        self._ready = False

    async def _produce(self, request: SynthesisRequest, emit: Emit) -> None:
        rate = self._capabilities.sample_rate
        total = int(len(request.text.strip()) / self.chars_per_second / request.speed * rate)
        position = 0
        while total > 0:
            take = min(self.chunk, total)
            indices = (np.arange(position, position + take)) % len(self._audio)
            await emit(self._audio[indices])
            position += take
            total -= take
            await asyncio.sleep(0)  # let the loop breathe between chunks, as a real engine would
