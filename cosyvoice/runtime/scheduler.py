"""The scheduler: worker threads serve every session in flight.

* The token worker runs the language-model stage: each step, one prefill chunk
  for a waiting session, then one token for every running session in one
  batched pass (continuous batching).
* A render worker (one per core on a CPU, one on a GPU; each takes disjoint
  sessions) takes the ready session closest to running out of audio
  and renders its next chunk, together with the next most urgent ready
  sessions when that costs nothing: when the most urgent one still gets its
  audio in time, or when a separate call would cost more (its overhead) than
  adding the session's frames to this one. A :class:`RenderCost` model,
  learned from the calls so far, tells which: on a CPU, where a call costs
  what its frames cost, sessions without audio yet are served one by one in
  arrival order; on a GPU, where a call's overhead dominates, they batch.

All torch work runs on these threads, never on the event loop; on a CPU the
stages run side by side on all cores. Cancelling a session takes it out of
both workers before their next step and frees its caches; an exception in a
step fails that step's sessions only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from cosyvoice.runtime.render import Renderer
from cosyvoice.runtime.session import END, LLM_DONE, Session

log = logging.getLogger(__name__)


class TokenStage(Protocol):
    """The language-model stage (torch or vLLM)."""

    @property
    def active(self) -> int: ...

    def add(self, session: Session) -> None: ...

    def remove(self, session: Session) -> None: ...

    def step(self) -> list[tuple[Session, int | None]]: ...


class RenderCost:
    """Seconds a render call takes, as ``overhead + per_frame * frames``, fitted by least squares over
    recent calls (older ones fade)."""

    def __init__(self, memory: float = 0.9) -> None:
        self.memory = memory
        self.sums = [0.0] * 5  # weight, x, y, xx, xy
        self.overhead = 0.0
        self.per_frame = 0.0

    def observe(self, frames: int, seconds: float) -> None:
        x, y = float(frames), seconds
        self.sums = [self.memory * total + new for total, new in zip(self.sums, (1.0, x, y, x * x, x * y))]
        weight, sx, sy, sxx, sxy = self.sums
        mean_x, mean_y = sx / weight, sy / weight
        spread = sxx / weight - mean_x**2
        slope = (sxy / weight - mean_x * mean_y) / spread if spread > 1e-9 * max(1.0, mean_x**2) else 0.0
        if slope <= 0.0:  # not enough variety yet: all of it is per-frame cost
            self.overhead, self.per_frame = 0.0, mean_y / max(mean_x, 1.0)
        else:
            self.per_frame = slope
            self.overhead = max(0.0, mean_y - slope * mean_x)

    def estimate(self, frames: int) -> float:
        return self.overhead + self.per_frame * frames


@dataclass
class SchedulerStats:
    """Counters for benchmarks and metrics: steps and how many sessions each served."""

    token_steps: int = 0
    tokens: int = 0
    render_calls: int = 0
    rendered_sessions: int = 0
    largest_token_batch: int = 0
    largest_render_batch: int = 0


class Scheduler:
    def __init__(
        self, tokens: TokenStage, renderer: Renderer, *, sample_rate: int, max_batch: int = 16, render_workers: int = 1
    ) -> None:
        self.tokens = tokens
        self.renderer = renderer
        self.sample_rate = sample_rate
        self.max_batch = max_batch
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._closed = False
        self._live: list[Session] = []  # submitted and not finished
        self._joining: list[Session] = []  # for the token stage
        self._leaving: list[Session] = []  # out of the token stage
        self._decoding: set[Session] = set()
        self._rendering: set[Session] = set()  # claimed by a render worker
        self.cost = RenderCost()
        self._threads = [threading.Thread(target=self._token_worker, name="cosyvoice-tokens", daemon=True)]
        self._threads += [
            threading.Thread(target=self._render_worker, name=f"cosyvoice-render-{i}", daemon=True)
            for i in range(render_workers)
        ]

    @property
    def busy(self) -> int:
        """Sessions in flight."""
        return len(self._live)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=30)

    def submit(self, session: Session) -> None:
        """Start serving ``session``: its LLM (unless its tokens are all known), then its chunks."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._live.append(session)
            if not session.llm_done:
                self._joining.append(session)
            self._cond.notify_all()

    def wake(self) -> None:
        """New text for a text-fed session: the token worker may have work again."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, session: Session) -> None:
        """Stop all work for ``session`` (no-op once it has finished)."""
        with self._cond:
            if session.cancelled or session not in self._live:
                return
            session.cancelled = True
            self._leaving.append(session)
            self._cond.notify_all()

    # -- the token worker -------------------------------------------------------
    def _token_worker(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._closed or self._joining or self._leaving or self.tokens.active):
                        self._cond.wait()
                    if self._closed:
                        return
                    joining, self._joining = self._joining, []
                    leaving, self._leaving = self._leaving, []
                for session in leaving:
                    self.tokens.remove(session)
                    self._decoding.discard(session)
                for session in joining:
                    if not session.cancelled:
                        self.tokens.add(session)
                        self._decoding.add(session)
                if not self.tokens.active:
                    continue
                try:
                    results = self.tokens.step()
                except Exception as error:  # noqa: BLE001 - delivered to the sessions of this step
                    log.exception("CosyVoice token step failed")
                    for session in list(self._decoding):
                        self.tokens.remove(session)
                        self._fail(session, error)
                    self._decoding.clear()
                    continue
                self._count_tokens(len(results))
                for session, token in results:
                    if token is None:
                        session.llm_done = True
                        self._decoding.discard(session)
                        if not session.cancelled:
                            session.deliver(LLM_DONE)
                    else:
                        session.accept(token)
                with self._cond:
                    self._cond.notify_all()

    def _count_tokens(self, batch: int) -> None:
        self.stats.token_steps += 1
        self.stats.tokens += batch
        self.stats.largest_token_batch = max(self.stats.largest_token_batch, batch)

    # -- the render worker ------------------------------------------------------
    def _render_worker(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    ready = self._ready()
                    while ready is not None and not ready:
                        self._cond.wait()
                        ready = self._ready()
                    if ready is None:
                        return
                    batch, frames = self._choose(ready)
                    self._rendering.update(batch)
                started = time.monotonic()
                try:
                    chunks = self.renderer.render(batch)
                except Exception as error:  # noqa: BLE001 - delivered to the sessions of this batch
                    log.exception("CosyVoice render step failed")
                    for session in batch:
                        self._fail(session, error)
                    chunks = None
                elapsed = time.monotonic() - started
                for session, chunk in zip(batch, chunks or ()):  # still claimed: chunks leave in order
                    if session.cancelled:
                        continue
                    session.emit(chunk, self.sample_rate)
                    if self.renderer.finished(session):
                        self._finish(session)
                with self._cond:
                    self._rendering.difference_update(batch)
                    if chunks is not None:
                        self._learn(elapsed, frames, len(batch))
                    self._cond.notify_all()

    def _ready(self) -> list[Session] | None:
        """Under the lock: unclaimed sessions with a chunk to render (None once closed). Drops cancelled
        sessions, opens new ones and finishes those that ended without a token."""
        if self._closed:
            return None
        ready = []
        for session in list(self._live):
            if session in self._rendering:
                continue
            if session.cancelled:
                self._live.remove(session)
                session.render = None
                continue
            if session.render is None:
                self.renderer.open(session)
            if session.llm_done and not session.tokens:
                self._finish(session)
            elif self.renderer.next_chunk(session) is not None:
                ready.append(session)
        return ready

    def _choose(self, ready: list[Session]) -> tuple[list[Session], int]:
        """The most urgent ready session, with the next most urgent ones (up to ``max_batch``) as long
        as adding them costs it nothing: it still gets its audio in time, or a separate call for the
        added session would cost more than its frames do here."""
        ready.sort(key=lambda s: s.deadline)
        first = ready[0]
        batch, frames = [first], self.renderer.frames(first)
        now = time.monotonic()
        for session in ready[1 : self.max_batch]:
            more = self.renderer.frames(session)
            in_time = first.deadline >= now + self.cost.estimate(frames + more)
            if not (in_time or self.cost.overhead > self.cost.per_frame * more):
                break
            batch.append(session)
            frames += more
        return batch, frames

    def _learn(self, seconds: float, frames: int, sessions: int) -> None:
        self.cost.observe(frames, seconds)
        self.stats.render_calls += 1
        self.stats.rendered_sessions += sessions
        self.stats.largest_render_batch = max(self.stats.largest_render_batch, sessions)

    def _finish(self, session: Session) -> None:
        with self._cond:
            if session in self._live:
                self._live.remove(session)
            session.render = None
        session.deliver(END)

    def _fail(self, session: Session, error: BaseException) -> None:
        with self._cond:
            if session in self._live:
                self._live.remove(session)
            session.render = None
            if not session.llm_done:
                self._leaving.append(session)
            self._cond.notify_all()
        if not session.cancelled:
            session.deliver(error)
