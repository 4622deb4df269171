"""Choose and build the engine the settings ask for; every engine option comes from its settings here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from pydantic import BaseModel

from cosyvoice import Engine
from cosyvoice.embedded import EmbeddedEngine, EmbeddedOptions
from cosyvoice.replay import ReplayEngine
from cosyvoice.text import ClauseOptions
from gateway.settings import Settings

Options = TypeVar("Options")


def build_engine(settings: Settings) -> Engine:
    """The CosyVoice engine when a model directory is set, else the embedded CPU voice
    (or, for load tests, the replay engine when ``engine.replay_audio`` is set); with ``backend = "ray"``,
    the edge's client of the engine pool (gateway/pool.py)."""
    if settings.engine.backend == "ray":
        from gateway.pool import pool_engine  # imported here: Ray is an optional extra

        return pool_engine(settings)
    limit = settings.limits.max_text_chars
    if settings.engine.replay_audio:
        return ReplayEngine(settings.engine.replay_audio, max_text_chars=limit)
    if settings.engine.model_dir:
        # Imported here: torch is an optional extra, and the embedded voice needs none of it.
        from cosyvoice.runtime.engine import CosyVoiceEngine, CosyVoiceOptions

        options = options_from(
            CosyVoiceOptions, settings.cosyvoice, model_dir=settings.engine.model_dir, device=settings.engine.device
        )
        return CosyVoiceEngine(options, max_text_chars=limit, clause_options=clause_options(settings))
    options = options_from(EmbeddedOptions, settings.embedded)
    return EmbeddedEngine(options, max_text_chars=limit, clause_options=clause_options(settings))


def clause_options(settings: Settings) -> ClauseOptions:
    """Where engines and sessions cut clauses."""
    engine = settings.engine
    return ClauseOptions(engine.first_clause_chars, engine.clause_chars, engine.max_clause_chars)


def options_from(kind: type[Options], section: BaseModel, **given: Any) -> Options:
    """An engine's options dataclass with every field not ``given`` from the settings key of the same name.

    An option with no setting of its name is an ``AttributeError`` here, not a default silently kept.
    """
    taken = {option.name: getattr(section, option.name) for option in fields(kind) if option.name not in given}
    return kind(**taken, **given)
