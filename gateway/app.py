"""The application factory: one engine, every route, a clean start and stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cosyvoice import Engine
from gateway import NAME, __version__
from gateway.engines import build_engine
from gateway.errors import install_error_handlers
from gateway.routes import system, unified
from gateway.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. The engine loads in the background: the server answers at
    once and ``/v1/health`` says 503 until the engine is ready."""
    settings = settings or Settings()
    engine = engine or build_engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start_engine(app, engine))
        try:
            yield
        finally:
            loading.cancel()
            await engine.close()

    app = FastAPI(title=NAME, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.engine_failure = None
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(unified.router)
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
