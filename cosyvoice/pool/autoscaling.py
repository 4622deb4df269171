"""Autoscaling on the pool's own demand: clauses in flight and queued first audio, per replica.

Ray Serve's default policy scales on ongoing requests alone. A voice pool has two demands that
rise differently: the streams it is speaking (an engine batch's worth is what a replica is for)
and the clauses still waiting for their first audio, which a caller hears as silence. Replicas
report both (``EngineReplica.record_autoscaling_stats``); this policy asks for enough replicas
that neither is above its target per replica. Ray Serve's wrapper then applies the deployment's
bounds, delays and scaling factors, as for its own policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STREAMS = "streams"
QUEUED = "awaiting_first_audio"


class PoolDemand:
    """An ``AutoscalingPolicy`` class: Ray Serve makes one with ``policy_kwargs`` and calls it every tick."""

    def __init__(self, target_streams: float, target_queued: float) -> None:
        self.target_streams = target_streams
        self.target_queued = target_queued

    def __call__(self, ctx) -> tuple[float, dict[str, Any]]:
        reported: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
        # Until replicas have reported, Ray Serve's own count of ongoing requests stands in for streams.
        streams = sum(reported[STREAMS].values()) if STREAMS in reported else ctx.total_num_requests
        queued = sum(reported.get(QUEUED, {}).values())
        return self.replicas_for(streams, queued), {}

    def replicas_for(self, streams: float, queued: float) -> float:
        """Replicas enough for both demands (fractional: Ray Serve rounds up, within the deployment's bounds)."""
        return max(streams / self.target_streams, queued / self.target_queued)
