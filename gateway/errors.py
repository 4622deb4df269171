"""One mapping from errors to HTTP answers; two shapes of body.

The service layer raises domain errors (:mod:`cosyvoice.errors`, admission's,
the synthesizer's); :data:`STATUS` alone turns them into HTTP status codes.
Client errors are 4xx with a message, never 500. Routes of the OpenAI API
answer in OpenAI's ``{"error": {"message", "type", "param", "code"}}``
envelope (and 400, not 422, for schema violations, as OpenAI does); all
other routes answer ``{"detail": ...}`` as FastAPI does.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cosyvoice import (
    EngineFailure,
    EngineUnavailable,
    InvalidRequest,
    SynthesisError,
    VoiceExists,
    VoiceNotFound,
)
from gateway.admission import Overloaded, RateLimited
from gateway.refusals import PathRefused, UploadTooLarge

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
OPENAI_PATHS = ("/v1/audio/", "/v1/models")
# Domain errors to HTTP status codes, first match wins: a subclass comes before its base.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (Overloaded, 503),
    (RateLimited, 429),
    (VoiceNotFound, 404),
    (VoiceExists, 409),
    (UploadTooLarge, 413),
    (PathRefused, 403),
    (InvalidRequest, 400),
    (EngineUnavailable, 503),
    (EngineFailure, 500),
)


class OpenAIError(Exception):
    """An error with OpenAI's ``param`` and ``code`` fields (e.g. an unknown model)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def install_error_handlers(app: FastAPI) -> None:
    for kind in (SynthesisError, HTTPException, RequestValidationError, OpenAIError, Overloaded, RateLimited):
        app.add_exception_handler(kind, handle_error)


def describe(error: Exception) -> tuple[int, str, dict[str, str]]:
    """Status, message and extra headers for an error raised while serving a request."""
    if isinstance(error, HTTPException):
        return error.status_code, str(error.detail), dict(error.headers or {})
    if isinstance(error, OpenAIError):
        return error.status, str(error), {}
    status = next((status for kind, status in STATUS if isinstance(error, kind)), None)
    if status is None:
        return 500, "internal error", {}
    headers = {}
    if isinstance(error, (Overloaded, RateLimited, EngineUnavailable)):
        headers["Retry-After"] = str(getattr(error, "retry_after", RETRY_AFTER_SECONDS))
    message = f"synthesis failed: {error}" if isinstance(error, EngineFailure) else str(error)
    return status, message, headers


async def handle_error(request: Request, error: Exception) -> JSONResponse:
    openai = request.url.path.startswith(OPENAI_PATHS)
    if isinstance(error, RequestValidationError):
        if not openai:
            return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, status_code=422)
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
        return error_response(request.url.path, 400, f"{param}: {first['msg']}" if param else first["msg"], param=param)
    status, message, headers = describe(error)
    if status >= 500 and status != 503:
        log.error("%s %s failed: %s", request.method, request.url.path, message)
    return error_response(
        request.url.path, status, message, headers=headers,
        param=getattr(error, "param", None), code=getattr(error, "code", None),
    )  # fmt: skip


def _finite(value: object) -> object:
    """FastAPI's 422 body echoes the input, and JSON has no NaN or Infinity: echo those as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def error_response(
    path: str, status: int, message: str, *, headers: dict | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """The error body this path's clients expect: OpenAI's envelope, or ``{"detail"}``."""
    if not path.startswith(OPENAI_PATHS):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )
