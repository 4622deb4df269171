"""The pool as a Ray Serve application: replicas, their resources, scaling, health and draining."""

from __future__ import annotations

from dataclasses import dataclass

from ray import serve
from ray.serve.config import RequestRouterConfig

from cosyvoice.pool.autoscaling import PoolDemand
from cosyvoice.pool.replica import EngineFactory, EngineReplica
from cosyvoice.pool.router import VoiceAffinityRouter

DEPLOYMENT = "EngineReplica"
# Replicas run their code on the actor's own event loop rather than a second one (Ray Serve's default): the
# engines keep their compute off the loop already, and a clause's stream saves a hop between loops per piece.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


@dataclass(frozen=True)
class PoolScaling:
    """How many replicas, on what, and when to add or drop one.

    With ``min_replicas == max_replicas`` the pool is fixed; otherwise Ray Serve scales it on the
    replicas' own demand (:class:`~cosyvoice.pool.autoscaling.PoolDemand`): enough replicas that neither
    the streams per replica (``target_ongoing_streams``, an engine batch's worth) nor the clauses per
    replica still waiting for first audio (``target_queued_first_audio``) is above its target. A replica scaled down stops taking new clauses and has ``drain_seconds`` to finish those
    it holds (clauses are seconds long; the edge moves an utterance's later clauses elsewhere).
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_streams: float = 8.0
    target_queued_first_audio: float = 2.0
    max_ongoing_streams: int = 32  # beyond it a replica takes no more; the router tries the next
    gpus_per_replica: float = 0.0  # 1 in production: one replica per GPU
    cpus_per_replica: float = 0.0  # the embedded voice's workers are processes of their own
    health_period_s: float = 5.0
    health_timeout_s: float = 10.0
    drain_seconds: float = 20.0
    routing_stats_period_s: float = 1.0  # how fresh the router's view of queued first audio is
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0


def pool_application(make_engine: EngineFactory, scaling: PoolScaling = PoolScaling()) -> serve.Application:
    """The application to ``serve.run`` (or to name in a Serve config file's ``import_path``)."""
    if scaling.min_replicas == scaling.max_replicas:
        sizing = {"num_replicas": scaling.min_replicas}
    else:
        sizing = {
            "autoscaling_config": {
                "min_replicas": scaling.min_replicas,
                "max_replicas": scaling.max_replicas,
                "target_ongoing_requests": scaling.target_ongoing_streams,
                "policy": {
                    "policy_function": PoolDemand,
                    "policy_kwargs": {
                        "target_streams": scaling.target_ongoing_streams,
                        "target_queued": scaling.target_queued_first_audio,
                    },
                },
                "upscale_delay_s": scaling.upscale_delay_s,
                "downscale_delay_s": scaling.downscale_delay_s,
            }
        }
    deployment = serve.deployment(
        EngineReplica,
        name=DEPLOYMENT,
        max_ongoing_requests=scaling.max_ongoing_streams,
        ray_actor_options={
            "num_gpus": scaling.gpus_per_replica, "num_cpus": scaling.cpus_per_replica,
            "runtime_env": {"env_vars": REPLICA_ENV},
        },  # fmt: skip
        health_check_period_s=scaling.health_period_s,
        health_check_timeout_s=scaling.health_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        graceful_shutdown_timeout_s=scaling.drain_seconds,
        request_router_config=RequestRouterConfig(
            request_router_class=VoiceAffinityRouter,
            request_routing_stats_period_s=scaling.routing_stats_period_s,
        ),
        **sizing,
    )
    return deployment.bind(make_engine)
