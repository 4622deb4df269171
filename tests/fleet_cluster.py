"""A real Ray cluster on loopback with an engine pool and its edges, for the fleet tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import ray
from ray import serve

from gateway.pool import pool_application
from gateway.settings import Settings
from support.servers import ServerThread, free_port


@contextlib.contextmanager
def fleet(
    app: str, settings_for: Callable[[str], Settings], *, edges: int = 2, env: dict[str, str] | None = None
) -> Iterator[list[ServerThread]]:
    """A local cluster (``env`` in its processes' environment), the pool ``app`` deployed from
    ``settings_for("")``, and ``edges`` edges, each with ``settings_for`` its own URL."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        serve.run(pool_application(settings_for("")), name=app, route_prefix=None)
        ports = [free_port() for _ in range(edges)]
        servers = [ServerThread(settings_for(f"http://127.0.0.1:{port}"), port=port).start(ready_timeout=60) for port in ports]
        yield servers
        for server in servers:
            server.stop()
        serve.shutdown()
    finally:
        ray.shutdown()
