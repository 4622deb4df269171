"""Prometheus metrics, one registry per app, and the event-loop lag monitor.

Streams report themselves (``AudioStream.stats`` and done callbacks) and
sessions publish events; this module only listens, so no hot path calls it
more than once per stream or per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cosyvoice import AudioStream
from cosyvoice.engine import StreamOutcome
from signaling.messages import BargeInEvent, Event, SessionClosedEvent, UtteranceFirstAudio
from signaling.session import Transport

log = logging.getLogger("gateway.sessions")

LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TRANSPORTS = ("http", *Transport)  # "http": one-shot synthesis requests, outside any session


class RejectReason(StrEnum):
    """Why work was refused at the door: the ``reason`` label of ``gateway_rejects_total``."""

    SHUTTING_DOWN = "shutting_down"
    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"
    WEBSOCKET_CAPACITY = "websocket_capacity"
    WEBRTC_CAPACITY = "webrtc_capacity"
    TELEPHONY_CAPACITY = "telephony_capacity"
    KEY_SESSIONS = "key_sessions"  # the API key has all the live sessions it may
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttfa = Histogram(
            "gateway_time_to_first_audio_seconds",
            "From a request (or the text completing a clause, for sessions) to its first audio.",
            ["transport", "mode"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rtf = Histogram(
            "gateway_real_time_factor", "Synthesis wall time over audio duration, per engine stream.",
            ["transport"], buckets=RTF_BUCKETS, registry=r,
        )  # fmt: skip
        self.audio_seconds = Counter("gateway_audio_seconds", "Seconds of audio produced.", ["transport"], registry=r)
        self.syntheses = Counter("gateway_syntheses", "Engine streams by how they ended.", ["transport", "outcome"], registry=r)
        self.active_sessions = Gauge("gateway_active_sessions", "Live real-time sessions.", ["transport"], registry=r)
        self.active_syntheses = Gauge("gateway_active_syntheses", "HTTP syntheses in progress.", registry=r)
        self.queue_depth = Gauge("gateway_admission_queue_depth", "Requests waiting for a synthesis slot.", registry=r)
        self.queue_wait = Histogram(
            "gateway_admission_queue_wait_seconds", "Time admitted requests waited for a slot.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.underrun = Counter("gateway_underrun_seconds", "Silence played mid-utterance for lack of audio.", ["transport"], registry=r)
        self.rejects = Counter("gateway_rejects", "Requests refused, by reason (RejectReason).", ["reason"], registry=r)
        self.barge_ins = Counter("gateway_barge_ins", "Utterances cancelled by caller speech.", ["transport"], registry=r)
        self.engine_busy = Gauge("gateway_engine_busy", "Engine workers busy (embedded) or sessions in the batch.", registry=r)
        self.engine_batch = Histogram(
            "gateway_engine_batch_size", "Engine batch size per step (batching engines).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds", "How late the event loop ran a 100 ms timer.",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.voices = Gauge("gateway_voices", "Saved voices in the registry.", registry=r)
        self.asyncio_tasks = Gauge("gateway_asyncio_tasks", "Tasks alive on the event loop (leak checks).", registry=r)
        self._gauges: list[Callable[[], None]] = []

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` before every scrape (for gauges read from live objects)."""
        self._gauges.append(refresh)

    def render(self) -> bytes:
        for refresh in self._gauges:
            refresh()
        return generate_latest(self.registry)

    def observe_stream(self, stream: AudioStream, transport: str, mode: str, *, first_audio: bool = True) -> None:
        """Record an engine stream's figures when it ends; ``first_audio`` off for session clauses."""

        def done(finished: AudioStream) -> None:
            stats = finished.stats
            self.syntheses.labels(transport, stats.outcome).inc()
            if first_audio and stats.time_to_first_chunk is not None:
                self.ttfa.labels(transport, mode).observe(stats.time_to_first_chunk)
            seconds = stats.samples / finished.sample_rate
            self.audio_seconds.labels(transport).inc(seconds)
            if stats.outcome is StreamOutcome.DONE and seconds > 0 and stats.finished is not None:
                self.rtf.labels(transport).observe((stats.finished - stats.started) / seconds)

        stream.add_done_callback(done)

    def session_event(self, event: Event, transport: Transport, mode: str) -> None:
        if isinstance(event, UtteranceFirstAudio):
            self.ttfa.labels(transport, mode).observe(event.latency_ms / 1000)
        elif isinstance(event, BargeInEvent):
            self.barge_ins.labels(transport).inc()
        elif isinstance(event, SessionClosedEvent):
            self.underrun.labels(transport).inc(event.stats.underrun_ms / 1000)
            log.info(json.dumps({"event": "session.end", "session_id": event.session_id, "transport": transport,
                                 "reason": event.reason, **event.stats.to_dict()}))  # fmt: skip


async def monitor_event_loop(metrics: Metrics, interval: float = 0.1) -> None:
    """Measure how late a timer fires: the lag every other callback on the loop suffers too."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, loop.time() - before - interval))
