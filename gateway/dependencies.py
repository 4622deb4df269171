"""Request-scoped access to the process-wide objects the app holds."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import HTTPConnection

from cosyvoice import Engine
from gateway.auth import caller_of
from gateway.settings import Settings
from gateway.synthesis import Synthesizer


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_synthesizer(request: Request) -> Synthesizer:
    """The synthesizer with the saved voices this request's caller may use."""
    return synthesizer_for(request)


def synthesizer_for(connection: HTTPConnection) -> Synthesizer:
    return connection.app.state.synthesizer.for_caller(caller_of(connection))
