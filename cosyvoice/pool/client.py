"""The edge's engine: the :class:`~cosyvoice.engine.Engine` contract over a Ray Serve streaming handle.

Text is cut into clauses here, with the same options a local engine uses, and each clause is one
streaming call to the pool. An utterance's clauses follow one replica: calls made from the same task
(a session's synthesis worker, or one HTTP stream's producer) prefer the replica that served the
previous one. A replica lost mid-clause (dead actor, unreachable, or silent past ``stall_timeout``)
costs that clause at most: one that had delivered no audio is spoken again on another replica, one
that had is cut where it was, and the stream goes on with the next clause. Nothing waits forever.

Clauses stream over Ray Serve's gRPC transport (``_by_reference=False``: pieces come straight back, not
through the object store), which with the replicas' code on their main loop (see :mod:`cosyvoice.pool.app`)
takes a clause's setup from about 4.5 ms to about 2 (``bench/fleet.py``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from cosyvoice.engine import AudioStream, Capabilities, Emit, Engine, SynthesisRequest
from cosyvoice.errors import EngineFailure, EngineUnavailable, SynthesisError
from cosyvoice.pool.app import DEPLOYMENT
from cosyvoice.pool.wire import EDGE, ClauseJob, Header, Piece
from cosyvoice.text import ClauseOptions, split_clauses
from cosyvoice.timing import WordTiming

log = logging.getLogger("cosyvoice.pool")

# What a lost replica looks like from the edge: its actor died or cannot be reached, or it went silent.
REPLICA_LOST = (RayActorError, ActorUnavailableError, TimeoutError)


@dataclass(frozen=True)
class PoolOptions:
    """Where the pool is and how long the edge waits for it (``[engine]`` and ``[pool]`` settings)."""

    address: str = ""  # a Ray cluster address; empty: the cluster this process already joined, else "auto"
    app: str = "cosyvoice"
    start_timeout: float = 120.0  # for the application to answer at start-up (replicas load models)
    stall_timeout: float = 15.0  # the longest wait for a clause's next piece (its first included)
    attempts: int = 3  # per clause: each failed one rules out a replica


@dataclass
class EdgeLoad:
    """One replica's clauses in flight from this edge (the gauges on /metrics)."""

    streams: int = 0
    awaiting_first_audio: int = 0
    served: int = 0  # clauses it finished


class PoolEngine(Engine):
    def __init__(
        self, options: PoolOptions = PoolOptions(), *, max_text_chars: int = 4096,
        clause_options: ClauseOptions = ClauseOptions(),
    ) -> None:  # fmt: skip
        super().__init__(max_text_chars=max_text_chars)
        self.options = options
        self._clause_options = clause_options
        self._capabilities: Capabilities | None = None
        self._handle = None
        self._pins: weakref.WeakKeyDictionary[asyncio.Task, str] = weakref.WeakKeyDictionary()
        self.load: dict[str, EdgeLoad] = {}
        self.failovers = 0  # clauses moved to another replica, or cut, because theirs was lost

    @property
    def capabilities(self) -> Capabilities:
        """The replicas' engine's; asked of the pool the first time (the gateway reads them before start-up)."""
        if self._capabilities is None:
            self._capabilities = self._connect().capabilities.remote().result(timeout_s=self.options.start_timeout)
        return self._capabilities

    async def start(self) -> None:
        handle = self._connect()
        deadline = asyncio.get_running_loop().time() + self.options.start_timeout
        while self._capabilities is None:
            try:
                self._capabilities = await asyncio.wait_for(handle.capabilities.remote(), 10)
            except Exception as error:  # the application is deploying, or not there at all
                if asyncio.get_running_loop().time() > deadline:
                    raise EngineUnavailable(f"engine pool '{self.options.app}' did not answer: {error}") from error
                await asyncio.sleep(0.5)
        self._ready = True

    def _connect(self):
        if self._handle is None:
            if not ray.is_initialized():
                ray.init(address=self.options.address or "auto", log_to_driver=False)
            self._handle = serve.get_deployment_handle(DEPLOYMENT, app_name=self.options.app)
        return self._handle

    async def close(self) -> None:
        # The pool outlives any edge; the handle's calls end with their streams.
        self._ready = False

    async def probe(self) -> bool:
        if not self._ready:
            return False
        try:
            await asyncio.wait_for(self._handle.replica_id.remote(), 5)
            return True
        except Exception:
            return False

    @property
    def busy(self) -> int:
        return sum(load.streams for load in self.load.values())

    def synthesize(self, request: SynthesisRequest) -> AudioStream:
        """As :meth:`Engine.synthesize`; the calling task (the stream's owner) is what an utterance's clauses share."""
        if not self._ready:
            raise EngineUnavailable(f"engine pool '{self.options.app}' is not ready")
        self.validate(request)
        owner = asyncio.current_task()
        return AudioStream(self.capabilities.sample_rate, lambda emit: self._produce(request, emit, owner))

    async def _produce(self, request: SynthesisRequest, emit: Emit, owner: asyncio.Task | None = None) -> None:
        owner = owner or asyncio.current_task()
        rate = self.capabilities.sample_rate
        seconds = 0.0
        cursor = 0
        for clause in split_clauses(request.text, self._clause_options):
            offset = request.text.find(clause, cursor)
            cursor = offset + len(clause) if offset >= 0 else cursor
            samples = await self._speak_clause(ClauseJob.of(clause, request), emit, (seconds, offset), owner)
            seconds += samples / rate

    async def _speak_clause(self, job: ClauseJob, emit: Emit, at: tuple[float, int], owner: asyncio.Task) -> int:
        """Stream one clause from the pool, on the owner's last replica if it can; returns the samples emitted."""
        avoid: list[str] = []
        error: BaseException | None = None
        for _ in range(self.options.attempts):
            emitted = 0
            replica = ""
            call = self._handle.options(stream=True, _by_reference=False).speak.remote(
                job, voice=job.voice_key, prefer=self._pins.get(owner, ""), avoid=tuple(avoid), edge=EDGE
            )
            try:
                header = await self._next(call)
                if not isinstance(header, Header):
                    raise EngineFailure(f"the engine pool answered {header!r} where a replica's header belongs")
                replica = header.replica
                self._pins[owner] = replica
                load = self.load.setdefault(replica, EdgeLoad())
                load.streams += 1
                load.awaiting_first_audio += 1
                try:
                    while (piece := await self._next(call)) is not None:
                        if emitted == 0 and len(piece.samples):
                            load.awaiting_first_audio -= 1
                        emitted += len(piece.samples)
                        await emit(piece.samples, _placed(piece, at))
                    load.served += 1
                finally:
                    load.streams -= 1
                    load.awaiting_first_audio -= emitted == 0
                return emitted
            except REPLICA_LOST as lost:
                self.failovers += 1
                error = lost
                self._pins.pop(owner, None)
                if replica:
                    avoid.append(replica)
                log.warning("engine pool: replica %s lost mid-clause (%s): %s", replica or "?", type(lost).__name__,
                            "the rest of the clause is lost" if emitted else "trying another")
                if emitted:
                    return emitted
            except SynthesisError:
                raise
            except Exception as failure:  # the replica's engine failed: a synthesis error, never a session's crash
                raise EngineFailure(f"the engine pool failed: {failure}") from failure
            finally:
                call.cancel()
        raise EngineUnavailable(f"the engine pool failed this clause {self.options.attempts} times: {error}")

    async def _next(self, call) -> Header | Piece | None:
        try:
            return await asyncio.wait_for(call.__anext__(), self.options.stall_timeout)
        except StopAsyncIteration:
            return None


def _placed(piece: Piece, at: tuple[float, int]) -> Sequence[WordTiming]:
    """The clause's word timings in the stream's timeline and text (none where the clause was not found)."""
    seconds, chars = at
    return [word.shifted(seconds, chars) for word in piece.words] if chars >= 0 else []

