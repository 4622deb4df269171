"""Routing that knows voices and load: Ray Serve's request-router interface, run in each edge's handle.

Ranks, most preferred first: the replica that spoke the utterance's previous clause (``prefer``), then
replicas holding the voice's prompt features, then the rest; within a rank, fewest queued first audio
(the replica's own report) then fewest ongoing streams. Replicas named in ``avoid`` (one that just
failed this clause) come last. Ray Serve then takes, within a rank, a replica with room under
``max_ongoing_requests``, and falls to the next rank when none has.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


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
            queued=lambda replica: self.replica_queue_len_cache.get(replica.replica_id) or 0,
        )


def rank_replicas(replicas, *, voice: str, prefer: str, avoid: frozenset[str], queued) -> list[list]:
    """The ranks for one clause (a pure function of the replicas' reports, so it is tested without Ray)."""

    def load(replica) -> tuple[int, int]:
        stats = replica.routing_stats or {}
        return stats.get("awaiting_first_audio", 0), queued(replica)

    def holds(replica) -> bool:
        return voice in (replica.routing_stats or {}).get("voices", ())

    usable = [r for r in replicas if r.replica_id.unique_id not in avoid]
    pinned = [r for r in usable if prefer and r.replica_id.unique_id == prefer]
    rest = [r for r in usable if r not in pinned]
    holders = sorted((r for r in rest if holds(r)), key=load)
    others = sorted((r for r in rest if not holds(r)), key=load)
    shunned = sorted((r for r in replicas if r.replica_id.unique_id in avoid), key=load)
    return [rank for rank in (pinned, holders, others, shunned) if rank]
