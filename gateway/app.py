"""The application factory: one engine, every route, a clean start and stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from cosyvoice import Engine
from gateway import NAME, __version__
from gateway.auth import ApiKeyMiddleware, KeyStore
from gateway.engines import build_engine
from gateway.errors import install_error_handlers
from gateway.limits import BodySizeLimit
from gateway.metrics import TRANSPORTS, monitor_event_loop
from gateway.pool import forward_sessions, watch_pool
from gateway.request_id import RequestIdMiddleware
from gateway.routes import cartesia, elevenlabs, openai, seed_a, seed_b, sessions, system, telephony, unified, voices, webrtc
from gateway.settings import Settings
from gateway.services import Services
from signaling.webrtc import restrict_host_addresses

log = logging.getLogger(__name__)


class GatewayApp(FastAPI):
    """FastAPI with the request id outside even Starlette's own 500 handler, so every answer has one."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. The engine loads in the background: the server answers at
    once and ``/v1/health`` says 503 until the engine is ready."""
    settings = settings or Settings()
    keys = KeyStore.from_settings(settings)
    engine = engine or build_engine(settings)
    restrict_host_addresses(settings.webrtc.host_addresses)
    services = Services.build(settings, keys, engine)
    metrics, limits = services.metrics, settings.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        background = [
            asyncio.create_task(_start_engine(services)),
            asyncio.create_task(monitor_event_loop(metrics)),
            *([asyncio.create_task(directory.run())] if directory is not None else []),
        ]
        audiosocket = None
        if settings.telephony.audiosocket_port:
            audiosocket = telephony.audiosocket_server(services)
            await audiosocket.start()
        app.state.audiosocket = audiosocket
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            if audiosocket is not None:
                await audiosocket.close()
            await services.sessions.close_all()
            await engine.close()

    app = GatewayApp(title=NAME, version=__version__, lifespan=lifespan)
    app.state.services = services  # read through gateway.dependencies.get_services
    # The services tests read by name.
    app.state.settings, app.state.registry = settings, services.registry
    app.state.admission, app.state.sessions = services.admission, services.sessions
    metrics.on_scrape(lambda: _refresh_gauges(services))
    watch_pool(metrics, services.engine)
    directory = forward_sessions(app, settings, services.sessions)  # innermost: after keys and size limits

    # Outermost first: CORS answers preflights before authentication; the size
    # limit refuses huge bodies before anything reads them.
    app.add_middleware(BodySizeLimit, limit=limits.max_upload_bytes * 4 // 3 + 64 * 1024)
    app.add_middleware(ApiKeyMiddleware, keys=keys, settings=settings, metrics=metrics)
    origins = settings.server.cors_origins or (["*"] if keys.open else [])
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=[
                "X-Sample-Rate", "X-Channels", "X-Bit-Depth", "Location", "Retry-After", "X-Request-Id", "X-Instructions-Ignored",
            ],
        )  # fmt: skip
    install_error_handlers(app)
    for module in (system, unified, seed_a, seed_b, openai, voices, sessions, webrtc, telephony, elevenlabs, cartesia):
        app.include_router(module.router)
    return app


async def drain(app: FastAPI, grace: float) -> None:
    """Graceful shutdown: refuse new work, let sessions finish speaking for up to ``grace`` s, close them."""
    services: Services = app.state.services
    services.admission.draining = True
    manager = services.sessions
    deadline = time.monotonic() + grace
    while any(session.speaking for session in manager.list()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await manager.close_all("server shutting down")


def _refresh_gauges(services: Services) -> None:
    metrics = services.metrics
    for transport in TRANSPORTS[1:]:
        metrics.active_sessions.labels(transport).set(services.sessions.count(transport))
    metrics.voices.set(len(services.registry))
    metrics.engine_busy.set(services.engine.busy)
    metrics.asyncio_tasks.set(len(asyncio.all_tasks()))


async def _start_engine(services: Services) -> None:
    engine = services.engine
    caps = engine.capabilities
    log.info("loading engine %s (%s)", caps.engine, caps.model)
    try:
        await engine.start()
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.exception("engine %s failed to start", caps.engine)
        services.engine_status.failure = f"{type(error).__name__}: {error}"
        return
    log.info("engine %s ready: %d Hz, voices %s", caps.engine, caps.sample_rate, ", ".join(caps.voices))
