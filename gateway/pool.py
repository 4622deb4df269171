"""The engine pool from the gateway's settings: the edge's engine (``backend = "ray"``) and the pool's deployment.

``python -m gateway.pool [config.toml]`` deploys (or updates) the pool application on the Ray cluster at
``engine.ray_address``; edges started with the same file then reach it by ``engine.ray_app``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from prometheus_client import Gauge

from cosyvoice import Engine
from gateway.engines import build_engine, clause_options
from gateway.metrics import Metrics
from gateway.settings import Settings, load_settings
from signaling.manager import SessionManager


def pool_engine(settings: Settings) -> Engine:
    """The edge-side engine that streams from the pool (Ray is imported only when asked for)."""
    from cosyvoice.pool.client import PoolEngine, PoolOptions

    pool = settings.pool
    options = PoolOptions(
        address=settings.engine.ray_address, app=settings.engine.ray_app,
        start_timeout=pool.start_timeout, stall_timeout=pool.stall_timeout, attempts=pool.attempts,
    )  # fmt: skip
    return PoolEngine(options, max_text_chars=settings.limits.max_text_chars, clause_options=clause_options(settings))


def replica_engine(settings: Settings) -> Engine:
    """What each replica runs: the engine these settings would run in one process."""
    local = settings.engine.model_copy(update={"backend": "local"})
    return build_engine(settings.model_copy(update={"engine": local}))


def pool_application(settings: Settings):
    """The Ray Serve application for these settings' ``[pool]`` section."""
    from cosyvoice.pool.app import PoolScaling, pool_application as application

    pool = settings.pool
    scaling = PoolScaling(
        min_replicas=pool.min_replicas, max_replicas=max(pool.max_replicas, pool.min_replicas),
        target_ongoing_streams=pool.target_ongoing_streams, target_queued_first_audio=pool.target_queued_first_audio,
        max_ongoing_streams=pool.max_ongoing_streams,
        gpus_per_replica=pool.gpus_per_replica, cpus_per_replica=pool.cpus_per_replica,
        drain_seconds=pool.drain_seconds,
    )  # fmt: skip
    return application(functools.partial(replica_engine, settings), scaling)


def watch_pool(metrics: Metrics, engine: Engine) -> None:
    """Gauges of the pool as this edge sees it, for autoscaling and alerts (nothing for a local engine)."""
    client = sys.modules.get("cosyvoice.pool.client")  # loaded only where the pool is in use: Ray is optional
    if client is None or not isinstance(engine, client.PoolEngine):
        return
    r = metrics.registry
    streams = Gauge("gateway_pool_streams", "Clauses this edge has in flight, per replica.", ["replica"], registry=r)
    awaiting = Gauge(
        "gateway_pool_awaiting_first_audio", "Of those, the ones with no audio yet (queued first audio), per replica.",
        ["replica"], registry=r,
    )  # fmt: skip
    failovers = Gauge(
        "gateway_pool_failovers", "Clauses moved to another replica, or cut, because theirs was lost (since start).",
        registry=r,
    )  # fmt: skip

    def refresh() -> None:
        streams.clear()
        awaiting.clear()
        for replica, load in list(engine.load.items()):
            streams.labels(replica).set(load.streams)
            awaiting.labels(replica).set(load.awaiting_first_audio)
        failovers.set(engine.failovers)

    metrics.on_scrape(refresh)


def forward_sessions(app, settings: Settings, sessions: SessionManager):
    """With ``[pool] edge_url`` set (and the Ray backend): publish this edge's sessions in the cluster's
    directory and answer control requests for other edges' sessions through their owners; returns the
    directory, whose ``run()`` the app keeps running (None when off)."""
    if settings.engine.backend != "ray" or not settings.pool.edge_url:
        return None
    from gateway.directory import SessionDirectory, SessionForwarding

    directory = SessionDirectory(settings.pool.edge_url, sessions)
    app.add_middleware(SessionForwarding, directory=directory, sessions=sessions)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.pool", description="Deploy the engine pool on Ray Serve")
    parser.add_argument("config", nargs="?", help="a config.toml (the same one the edges use)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = load_settings(args.config)
    import ray
    from ray import serve

    ray.init(address=settings.engine.ray_address or "auto")
    serve.run(pool_application(settings), name=settings.engine.ray_app, route_prefix=None)
    logging.getLogger("gateway.pool").info("engine pool '%s' is running", settings.engine.ray_app)


if __name__ == "__main__":
    main()
