"""All live sessions of the process, whatever their transport, and their idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from signaling.session import Session, Transport

log = logging.getLogger(__name__)


class SessionManager:
    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task | None = None

    def add(self, session: Session) -> Session:
        if session.id in self._sessions:
            raise ValueError(f"a session with id {session.id} is already live")
        self._sessions[session.id] = session
        session.on_close(lambda: self._sessions.pop(session.id, None))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    def count(self, transport: Transport | None = None) -> int:
        return sum(1 for s in self._sessions.values() if transport is None or s.transport == transport)

    async def close_all(self, reason: str = "server shutting down") -> None:
        await asyncio.gather(*(session.close(reason) for session in self.list()), return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        interval = max(0.05, min(5.0, self.idle_timeout / 4))
        while self._sessions:
            await asyncio.sleep(interval)
            for session in self.list():
                if session.idle_for() > self.idle_timeout:
                    log.info("session %s idle for %.0f s; closing it", session.id, session.idle_for())
                    await session.close("idle timeout")
