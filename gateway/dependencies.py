"""Request-scoped access to the app's services: the dependencies routes declare with ``Depends``."""

from __future__ import annotations

from fastapi import Depends
from starlette.requests import HTTPConnection

from cosyvoice.voices import VoiceScope
from gateway.auth import caller_of
from gateway.services import Services
from gateway.settings import Settings
from gateway.synthesis import Synthesizer


def get_services(connection: HTTPConnection) -> Services:
    return connection.app.state.services


def get_settings(services: Services = Depends(get_services)) -> Settings:
    return services.settings


def get_synthesizer(connection: HTTPConnection, services: Services = Depends(get_services)) -> Synthesizer:
    """The synthesizer with the saved voices this request's caller may use."""
    return services.synthesizer.for_caller(caller_of(connection))


def get_registry(synth: Synthesizer = Depends(get_synthesizer)) -> VoiceScope:
    """The saved voices this request's caller may use and change."""
    return synth.registry
