"""The application factory: one engine, every route, a clean start and stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cosyvoice import Engine
from cosyvoice.voices import VoiceRegistry
from gateway import NAME, __version__
from gateway.engines import build_engine
from gateway.errors import install_error_handlers
from gateway.limits import BodySizeLimit
from gateway.routes import openai, seed_a, seed_b, sessions, system, telephony, unified, voices, webrtc
from gateway.settings import Settings
from gateway.sessions import SessionFactory
from gateway.synthesis import Synthesizer
from signaling.manager import SessionManager
from signaling.webrtc import restrict_host_addresses

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. The engine loads in the background: the server answers at
    once and ``/v1/health`` says 503 until the engine is ready."""
    settings = settings or Settings()
    engine = engine or build_engine(settings)
    restrict_host_addresses(settings.webrtc.host_addresses)
    registry = VoiceRegistry(settings.data_dir / "voices", reserved=frozenset(engine.capabilities.voices))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start_engine(app, engine))
        audiosocket = None
        if settings.telephony.audiosocket_port:
            audiosocket = telephony.audiosocket_server(app)
            await audiosocket.start()
        app.state.audiosocket = audiosocket
        try:
            yield
        finally:
            loading.cancel()
            if audiosocket is not None:
                await audiosocket.close()
            await app.state.sessions.close_all()
            await engine.close()

    app = FastAPI(title=NAME, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.engine_failure = None
    app.state.registry = registry
    app.state.synthesizer = Synthesizer(engine, registry, settings)
    app.state.sessions = SessionManager(settings.session.idle_timeout)
    app.state.session_factory = SessionFactory(app.state.synthesizer, settings, app.state.sessions)
    # Base64 in JSON makes an upload a third larger; leave room for the other fields.
    app.add_middleware(BodySizeLimit, limit=settings.limits.max_upload_bytes * 4 // 3 + 64 * 1024)
    install_error_handlers(app)
    for module in (system, unified, seed_a, seed_b, openai, voices, sessions, webrtc, telephony):
        app.include_router(module.router)
    return app


async def _start_engine(app: FastAPI, engine: Engine) -> None:
    caps = engine.capabilities
    log.info("loading engine %s (%s)", caps.engine, caps.model)
    try:
        await engine.start()
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.exception("engine %s failed to start", caps.engine)
        app.state.engine_failure = f"{type(error).__name__}: {error}"
        return
    log.info("engine %s ready: %d Hz, voices %s", caps.engine, caps.sample_rate, ", ".join(caps.voices))
