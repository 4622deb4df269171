"""The process-wide services, built once per app and handed to routes by dependency (:mod:`gateway.dependencies`)."""

from __future__ import annotations

from dataclasses import dataclass

from cosyvoice import Engine
from cosyvoice.voices import VoiceRegistry
from gateway.admission import Admission, CapacityGroup
from gateway.auth import Caller, KeyStore
from gateway.metrics import Metrics
from gateway.sessions import SessionFactory
from gateway.settings import Settings
from gateway.synthesis import Synthesizer
from signaling.manager import SessionManager


@dataclass
class EngineStatus:
    """What became of the engine's start in the background: ``failure`` says why it did not (for /v1/health)."""

    failure: str | None = None


@dataclass(frozen=True)
class Services:
    """Everything a route may need, typed; one per app."""

    settings: Settings
    keys: KeyStore
    telephony_caller: Caller  # who owns phone calls (see KeyStore.telephony_caller)
    engine: Engine
    engine_status: EngineStatus
    registry: VoiceRegistry
    metrics: Metrics
    admission: Admission
    sessions: SessionManager
    synthesizer: Synthesizer
    session_factory: SessionFactory

    @classmethod
    def build(cls, settings: Settings, keys: KeyStore, engine: Engine) -> Services:
        """The services around ``engine``, as ``settings`` configure them."""
        registry = VoiceRegistry(settings.data_dir / "voices", reserved=frozenset(engine.capabilities.voices))
        metrics = Metrics()
        limits = settings.limits
        admission = Admission(
            max_syntheses=limits.max_syntheses,
            queue_size=limits.queue_size,
            queue_timeout=limits.queue_timeout,
            max_sessions={group: getattr(limits, f"max_{group}_sessions") for group in CapacityGroup},
            metrics=metrics,
        )
        sessions = SessionManager(settings.session.idle_timeout)
        synthesizer = Synthesizer(engine, registry, settings, admission, metrics)
        return cls(
            settings=settings,
            keys=keys,
            telephony_caller=keys.telephony_caller(settings.telephony.owner),
            engine=engine,
            engine_status=EngineStatus(),
            registry=registry,
            metrics=metrics,
            admission=admission,
            sessions=sessions,
            synthesizer=synthesizer,
            session_factory=SessionFactory(synthesizer, settings, sessions, admission, metrics),
        )
