"""Real gateway servers for tests and benches: uvicorn on a loopback socket, in a thread or a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.app import create_app
from gateway.connections import server_options
from gateway.settings import Settings
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """A gateway serving on 127.0.0.1 from a thread with its own event loop.

    Tests talk to it over real sockets and may read its app state (the engine,
    the pool) directly, since reads of plain attributes are thread-safe.
    """

    def __init__(self, settings: Settings | None = None, *, port: int | None = None, **app_options: Any) -> None:
        settings = settings or Settings()
        self.app = create_app(settings, **app_options)
        self.port = port or free_port()  # a port of one's own: for settings that name the server's URL
        self.url = f"http://127.0.0.1:{self.port}"
        options = server_options(settings.server)  # as `python -m gateway` serves
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **options)
        )
        self._thread = threading.Thread(target=self._serve, name="gateway-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def engine(self):
        return self.app.state.services.engine

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve())

    def start(self, *, ready_timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        wait_until(lambda: http_status(self.url + "/v1/health") == 200, ready_timeout, "gateway ready")
        return self

    def call(self, coroutine_function: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (for engine calls from a test)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine_function(), self.loop).result(timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)


class ServerProcess:
    """``python -m gateway`` as a subprocess, as a user runs it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=cwd or ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_listening(self, timeout: float = 30.0) -> None:
        wait_until(lambda: http_status(self.url + "/") == 200, timeout, "gateway listening")

    def stop(self) -> str:
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output


def http_status(url: str) -> int | None:
    """The status of a GET, or None while nothing answers."""
    return (get_json_and_status(url) or (None, None))[1]


def get_json_and_status(url: str) -> tuple[dict, int] | None:
    try:
        response = httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return None
    return response.json(), response.status_code

