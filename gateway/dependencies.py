"""Request-scoped access to the process-wide objects the app holds."""

from __future__ import annotations

from fastapi import Request

from cosyvoice import Engine
from gateway.settings import Settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings
