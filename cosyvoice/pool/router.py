"""Routing that knows voices and load: Ray Serve's request-router interface, run in each edge's handle.

Ranks, most preferred first: the replica that spoke the utterance's previous clause (``prefer``); then,
among the replicas whose queued first audio is near the least, those holding the saved voice's prompt
features, then the others; then the busier replicas; replicas named in ``avoid`` (one that just failed
this clause) last. Within a rank Ray Serve takes the replica with the fewest ongoing requests (probed
fresh) under ``max_ongoing_requests``, and falls to the next rank when none has room. Affinity never
outweighs load: a replica holding the voice but busier than the rest waits its turn behind them.
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

# Queued first audio comes from each replica's report, up to ``request_routing_stats_period_s`` old: replicas
# within this many clauses of the least queued share a rank, so fresh ongoing counts decide among them
# instead of a burst of new clauses all following one stale report.
SLACK = 2


class VoiceAffinityRouter(RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        hints = pending_request.kwargs if pending_request is not None else {}
        return rank_replicas(
            candidate_replicas,
            voice=hints.get("voice", ""),
            prefer=hints.get("prefer", ""),
            avoid=frozenset(hints.get("avoid", ())),
        )


def rank_replicas(replicas, *, voice: str, prefer: str, avoid: frozenset[str]) -> list[list]:
    """The ranks for one clause (a pure function of the replicas' reports, so it is tested without Ray)."""
    usable = [r for r in replicas if r.replica_id.unique_id not in avoid]
    pinned = [r for r in usable if prefer and r.replica_id.unique_id == prefer]
    rest = [r for r in usable if r not in pinned]
    least = min((_queued(r) for r in rest), default=0)
    near = [r for r in rest if _queued(r) <= least + SLACK]
    holders = [r for r in near if voice and voice in _stats(r).get("voices", ())]
    others = [r for r in near if r not in holders]
    busier = [r for r in rest if r not in near]
    shunned = [r for r in replicas if r.replica_id.unique_id in avoid]
    # Ray Serve takes a rank's least loaded replica, the first of equals: in random order, clauses routed
    # at the same moment (before any has counted on a replica's load) spread instead of all taking the first.
    return [random.sample(rank, len(rank)) for rank in (pinned, holders, others, busier, shunned) if rank]


def _queued(replica) -> int:
    return _stats(replica).get("awaiting_first_audio", 0)


def _stats(replica) -> dict:
    return replica.routing_stats or {}
