"""A pool of Piper worker processes, driven over pipes from the event loop.

Each worker runs one clause at a time. A stream takes a worker per clause,
so concurrent streams interleave fairly (first come, first served) and a new
stream waits at most one clause for its first audio. A stream cancelled
mid-clause hands its worker to a drain task, which discards the rest of that
clause and returns the worker to the pool: the work stops within one clause.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from cosyvoice.embedded import protocol
from cosyvoice.errors import EngineFailure
from cosyvoice.timing import TimingSource, WordTiming

log = logging.getLogger(__name__)

FRAME_TIMEOUT = 30.0  # seconds without a frame before a worker counts as hung
RESPAWN_DELAY = 1.0


class WorkerExited(EngineFailure):
    """The worker process died or hung; its job may be retried on another worker."""


class WorkerProcess:
    """One worker subprocess and the framed pipe to it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self._command = command
        self._env = env
        self._process: asyncio.subprocess.Process | None = None
        self._jobs = itertools.count(1)
        self._header: tuple[int, int, int] | None = None
        self.pending_job: int | None = None
        self.info: dict = {}
        self._failed = False

    @property
    def alive(self) -> bool:
        """Running and answering (a worker whose pipe broke counts as dead at once)."""
        return self._process is not None and self._process.returncode is None and not self._failed

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, timeout: float) -> dict:
        self._process = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )
        kind, _, payload = await self._read_frame(timeout)
        if kind != protocol.READY:
            raise EngineFailure(f"embedded worker sent frame {kind} instead of READY")
        self.info = json.loads(payload)
        return self.info

    async def synthesize(
        self, text: str, speed: float, deterministic: bool
    ) -> AsyncIterator[np.ndarray | tuple[WordTiming, ...]]:
        """Yield the clause's audio, one array per sentence Piper finds in it, then its words' timings.

        The timings count from the clause's first sample and index ``text``.
        """
        job = await self._send({"op": "synthesize", "text": text, "speed": speed, "deterministic": deterministic})
        while True:
            kind, frame_job, payload = await self._read_frame(FRAME_TIMEOUT)
            if frame_job != job:
                raise EngineFailure(f"embedded worker answered job {frame_job} while {job} was running")
            if kind == protocol.AUDIO:
                yield np.frombuffer(payload, dtype="<f4").astype(np.float32)
            elif kind == protocol.WORDS:
                yield self._words(text, json.loads(payload))
            elif kind == protocol.END:
                self.pending_job = None
                return
            else:
                self.pending_job = None
                raise EngineFailure(f"embedded worker failed: {payload.decode(errors='replace')}")

    def _words(self, text: str, report: dict) -> tuple[WordTiming, ...]:
        rate = self.info["sample_rate"]
        source = TimingSource.ALIGNED if report["aligned"] else TimingSource.ESTIMATED
        return tuple(
            WordTiming(text[first:last], start / rate, end / rate, first, last, source)
            for first, last, start, end in report["words"]
        )

    async def ping(self, timeout: float) -> None:
        await self._send({"op": "ping"})
        await self.drain(timeout)

    async def drain(self, timeout: float = FRAME_TIMEOUT) -> None:
        """Read and discard frames until the pending job ends."""
        while self.pending_job is not None:
            kind, job, _ = await self._read_frame(timeout)
            if job == self.pending_job and kind in (protocol.END, protocol.ERROR):
                self.pending_job = None

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin:
            process.stdin.close()
        try:
            async with asyncio.timeout(2.0):
                await process.wait()
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def wait(self) -> None:
        """Until the process has exited."""
        if self._process is not None:
            await self._process.wait()

    async def _send(self, request: dict) -> int:
        job = next(self._jobs)
        self.pending_job = job
        assert self._process and self._process.stdin
        try:
            self._process.stdin.write(json.dumps({**request, "job": job}).encode() + b"\n")
            await self._process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            self._failed = True
            raise WorkerExited(f"embedded worker (pid {self.pid}) exited") from error
        return job

    async def _read_frame(self, timeout: float) -> tuple[int, int, bytes]:
        # Cancel-safe: a header read before a cancellation is kept for the next call,
        # so a drain after a cancelled read stays aligned with the frame boundaries.
        assert self._process and self._process.stdout
        stdout = self._process.stdout
        try:
            async with asyncio.timeout(timeout):
                if self._header is None:
                    self._header = protocol.HEADER.unpack(await stdout.readexactly(protocol.HEADER.size))
                kind, job, length = self._header
                payload = await stdout.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as error:
            self._failed = True
            raise WorkerExited(f"embedded worker (pid {self.pid}) exited") from error
        except asyncio.TimeoutError as error:
            self._failed = True
            self.kill()
            raise WorkerExited(f"embedded worker (pid {self.pid}) hung; killed it") from error
        self._header = None
        return kind, job, payload


class WorkerPool:
    """A fixed number of workers; a worker that exits is replaced in the background."""

    def __init__(self, size: int, model: Path, config: Path, threads: int, start_timeout: float) -> None:
        self.size = size
        self._command = [
            sys.executable, "-m", "cosyvoice.embedded.worker",
            "--model", str(model), "--config", str(config), "--threads", str(threads),
        ]  # fmt: skip
        package_root = str(Path(__file__).resolve().parents[2])
        self._env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        self._start_timeout = start_timeout
        self._idle: list[WorkerProcess] = []
        # Jobs waiting for a worker, earliest deadline first.
        self._waiters: list[tuple[float, int, asyncio.Future[WorkerProcess]]] = []
        self._order = itertools.count()
        self._workers: list[WorkerProcess] = []
        self._background: set[asyncio.Task] = set()
        self._closed = False

    @property
    def busy(self) -> int:
        """Workers not free: running or draining a job, or being replaced."""
        return self.size - sum(worker.alive for worker in self._idle)

    @property
    def alive(self) -> int:
        return sum(worker.alive for worker in self._workers)

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers if worker.alive]

    async def start(self) -> None:
        self._workers = [WorkerProcess(self._command, self._env) for _ in range(self.size)]
        try:
            await asyncio.gather(*(worker.start(self._start_timeout) for worker in self._workers))
        except BaseException:
            await self.close()
            raise
        for worker in self._workers:
            self._watch(worker)
            self._put_idle(worker)

    @asynccontextmanager
    async def acquire(self, deadline: float = 0.0) -> AsyncIterator[WorkerProcess]:
        """Take a free worker for one job; give it back (drained) afterwards.

        When jobs wait, the one with the earliest ``deadline`` (loop time by
        which its audio is needed) gets the next free worker: a stream about
        to run dry, or a new one waiting for its first audio, goes first.
        """
        worker = await self._take(deadline)
        try:
            yield worker
        finally:
            self._give_back(worker)

    async def ping(self, timeout: float = 5.0) -> bool:
        """True if a worker answers; busy workers count as answering."""
        free = [worker for worker in self._idle if worker.alive]
        if not free:
            return self.alive > 0
        worker = free[0]
        self._idle.remove(worker)
        try:
            await worker.ping(timeout)
            return True
        except EngineFailure:
            return False
        finally:
            self._give_back(worker)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(worker.stop() for worker in self._workers), return_exceptions=True)

    async def _take(self, deadline: float) -> WorkerProcess:
        while True:
            while self._idle and not self._waiters:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
            waiter: asyncio.Future[WorkerProcess] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (deadline, next(self._order), waiter))
            try:
                worker = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._put_idle(waiter.result())  # handed over just as we were cancelled
                raise
            if worker.alive:
                return worker

    def _put_idle(self, worker: WorkerProcess) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _give_back(self, worker: WorkerProcess) -> None:
        if self._closed or not worker.alive:
            return  # the watcher replaces dead workers
        if worker.pending_job is not None:
            self._spawn(self._drain(worker))
        else:
            self._put_idle(worker)

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _watch(self, worker: WorkerProcess) -> None:
        self._spawn(self._replace_when_dead(worker))

    async def _drain(self, worker: WorkerProcess) -> None:
        try:
            await worker.drain()
        except EngineFailure:
            log.warning("embedded worker %s failed while draining a cancelled job", worker.pid)
            worker.kill()
            return
        self._put_idle(worker)

    async def _replace_when_dead(self, dead: WorkerProcess) -> None:
        await dead.wait()
        if dead in self._idle:
            self._idle.remove(dead)
        if self._closed:
            return
        log.warning("embedded worker %s exited; starting a replacement", dead.pid)
        while not self._closed:
            worker = WorkerProcess(self._command, self._env)
            try:
                await worker.start(self._start_timeout)
            except (EngineFailure, OSError) as error:
                log.error("could not start an embedded worker: %s", error)
                await worker.stop()
                await asyncio.sleep(RESPAWN_DELAY)
                continue
            self._workers[self._workers.index(dead)] = worker
            self._watch(worker)
            self._put_idle(worker)
            return
