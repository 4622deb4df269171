"""A speech source with known audio, for driving sessions without an engine."""

from __future__ import annotations

import asyncio

import numpy as np

from cosyvoice import AudioStream, EngineFailure, UnknownVoice
from signaling.session import VoiceSettings

RATE = 8000
FRAME = 160  # 20 ms
CHUNK = 400  # 50 ms per chunk
CHUNKS = 3  # chunks per clause: 150 ms, 1200 samples
CLAUSE = CHUNK * CHUNKS


class Script:
    """A speech source with known audio: each clause is ``CHUNKS`` chunks whose samples are its number (1, 2, ...)."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.finished: list[str] = []  # clauses produced to the end
        self.stopped: list[str] = []  # clauses whose production was cancelled
        self.gates: dict[str, asyncio.Event] = {}  # a clause here pauses after its first chunk until set
        self.failing: set[str] = set()  # a clause here fails after its first chunk

    def check(self, voice: VoiceSettings) -> None:
        if voice.voice == "nobody":
            raise UnknownVoice("unknown voice 'nobody'")

    def open(self, text: str, voice: VoiceSettings) -> AudioStream:
        self.opened.append(text)
        value = float(len(self.opened))

        async def produce(emit) -> None:
            try:
                for index in range(CHUNKS):
                    if index == 1 and text in self.gates:
                        await self.gates[text].wait()
                    if index == 1 and text in self.failing:
                        raise EngineFailure("the engine broke")
                    await emit(np.full(CHUNK, value, np.float32))
                self.finished.append(text)
            except asyncio.CancelledError:
                self.stopped.append(text)
                raise

        return AudioStream(RATE, produce)
