"""One engine pool replica: an engine (on its GPU, or the embedded voice) serving clause streams.

Each replica loads its engine once and serves every stream routed to it concurrently, so an engine
that batches (CosyVoice) batches across all of them. A stream the edge cancels is cancelled here too
(Ray Serve cancels the generator's task), which cancels the engine stream and frees its compute.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable

import numpy as np

from cosyvoice.engine import Capabilities, Engine
from cosyvoice.pool.autoscaling import QUEUED, STREAMS
from cosyvoice.pool.wire import ClauseJob, Header, Piece, ReplicaLoad

log = logging.getLogger("cosyvoice.pool")

# Saved voices remembered as held: a CosyVoice replica's prompt cache keeps about this many 6 s prompts
# in its default 1 GB; routing only needs the recent ones, and a stale entry costs one recomputation.
HELD_VOICES = 64

EngineFactory = Callable[[], Engine]


class EngineReplica:
    """The deployment's class: ``serve.deployment`` wraps it (see :mod:`cosyvoice.pool.app`)."""

    async def __init__(self, make_engine: EngineFactory) -> None:
        self._engine = make_engine()
        await self._engine.start()
        self._id = _replica_id()
        self._held: OrderedDict[str, None] = OrderedDict()  # saved voices served recently, most recent last
        self._streams = 0
        self._awaiting: Counter[str] = Counter()  # clauses with no audio yet, by the edge that sent them
        self._served = 0
        self._cancelled = 0
        log.info("replica %s ready: %s", self._id, self._engine.capabilities.model)

    async def capabilities(self) -> Capabilities:
        return self._engine.capabilities

    async def speak(
        self, job: ClauseJob, *, voice: str = "", prefer: str = "", avoid: tuple[str, ...] = (), edge: str = ""
    ) -> AsyncIterator[Header | Piece]:
        """A :class:`Header`, then the clause's pieces; ``voice``, ``prefer`` and ``avoid`` are the router's hints."""
        yield Header(self._id)
        stream = self._engine.synthesize(job.request())
        self._streams += 1
        self._awaiting[edge] += 1
        waiting = True
        taken = 0
        try:
            async with stream:
                async for samples in stream:
                    if waiting:
                        self._heard(edge)
                        waiting = False
                    words, taken = tuple(stream.words[taken:]), len(stream.words)
                    yield Piece(samples, words)
            if len(stream.words) > taken:  # timings the engine sent after its last chunk
                yield Piece(np.zeros(0, dtype=np.float32), tuple(stream.words[taken:]))
            self._served += 1
            self._hold(job.voice_key)
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        finally:
            self._streams -= 1
            if waiting:
                self._heard(edge)

    async def load(self, *, prefer: str = "") -> ReplicaLoad:
        """This replica's figures (``prefer`` names the replica wanted: the router honours it while it has room)."""
        return ReplicaLoad(
            self._id, self._streams, self._awaiting.total(), tuple(self._held), dict(self._awaiting),
            served=self._served, cancelled=self._cancelled, busy=self._engine.busy,
        )  # fmt: skip

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve's autoscaler collects this from every replica for :class:`~cosyvoice.pool.autoscaling.PoolDemand`."""
        return {STREAMS: float(self._streams), QUEUED: float(self._awaiting.total())}

    async def replica_id(self) -> str:
        return self._id

    def record_routing_stats(self) -> dict:
        """Ray Serve polls this for the request router (``request_routing_stats_period_s``)."""
        return ReplicaLoad(self._id, self._streams, self._awaiting.total(), tuple(self._held), dict(self._awaiting)).as_stats()

    async def check_health(self) -> None:
        """Ray Serve's health check: an engine that no longer answers gets this replica replaced."""
        if not await self._engine.probe():
            raise RuntimeError(f"replica {self._id}: engine '{self._engine.capabilities.engine}' failed its probe")

    async def __del__(self) -> None:
        # Ray Serve awaits an async __del__ after draining (graceful_shutdown_*): free the engine's workers.
        # It calls it after a failed __init__ too, when there may be no engine.
        engine = getattr(self, "_engine", None)
        if engine is not None:
            await engine.close()

    def _heard(self, edge: str) -> None:
        """A clause's first audio went out (or it ended without any)."""
        self._awaiting[edge] -= 1
        if not self._awaiting[edge]:
            del self._awaiting[edge]

    def _hold(self, voice: str) -> None:
        if voice:
            self._held[voice] = None
            self._held.move_to_end(voice)
            while len(self._held) > HELD_VOICES:
                self._held.popitem(last=False)


def _replica_id() -> str:
    from ray import serve

    return serve.get_replica_context().replica_id.unique_id
