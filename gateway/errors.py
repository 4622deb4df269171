"""Map engine errors to HTTP answers: client errors are 4xx with a message, never 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cosyvoice import EngineFailure, EngineUnavailable, InvalidRequest

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(EngineUnavailable, _engine_unavailable)
    app.add_exception_handler(EngineFailure, _engine_failure)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=400)


async def _engine_unavailable(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


async def _engine_failure(request: Request, error: Exception) -> JSONResponse:
    log.error("engine failure on %s: %s", request.url.path, error)
    return JSONResponse({"detail": f"synthesis failed: {error}"}, status_code=500)
