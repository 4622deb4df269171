"""Request-scoped access to the process-wide objects the app holds."""

from __future__ import annotations

from fastapi import Request

from cosyvoice import Engine
from gateway.settings import Settings
from gateway.synthesis import Synthesizer


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_synthesizer(request: Request) -> Synthesizer:
    return request.app.state.synthesizer
