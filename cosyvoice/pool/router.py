"""Routing that knows voices and load: Ray Serve's request-router interface, run in each edge's handle.

A clause goes, most preferred first, to the replica that spoke its utterance's previous clause
(``prefer``); else, among the replicas whose queued first audio is near the least, to one holding the
saved voice's prompt features, and among equals to the one with the fewest streams; then to the busier
replicas; replicas named in ``avoid`` (one that just failed this clause) last. Affinity never outweighs
load: a replica holding the voice but with more first audio queued waits its turn behind the others.

Replicas report their load every ``request_routing_stats_period_s``: a report can still show clauses
that have ended, and a burst of clauses routed in one instant would all follow one report. So a
replica's queue is what the other edges had queued there at its last report, plus this edge's own
clauses on it, counted here as they are routed and until they end (:class:`InFlight`: fresh to the
request, and an upper bound on this edge's queued first audio). The top choice is a rank of its own,
so the count lands where the clause goes; Ray Serve falls to the next rank only when that replica is
full (``max_ongoing_requests``), taking the least loaded of the rest.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from cosyvoice.pool.wire import EDGE

# The other edges' queued first audio comes from each replica's report, up to ``request_routing_stats_period_s``
# old: replicas within this many clauses of the least queued count as equally free.
SLACK = 2


class InFlight:
    """The clauses this router has sent to each replica that have not ended: fresher than any report."""

    def __init__(self) -> None:
        self._replica_of: dict[str, str] = {}  # request id -> replica id
        self._pending: dict[str, PendingRequest] = {}  # request id -> the request, while Ray Serve routes it
        self._counts: Counter[str] = Counter()

    def add(self, request: str, replica: str, pending: PendingRequest | None = None) -> None:
        self.remove(request)  # a request routed again (its replica was full) counts once
        self._replica_of[request] = replica
        self._counts[replica] += 1
        if pending is not None:
            self._pending[request] = pending

    def remove(self, request: str) -> None:
        self._pending.pop(request, None)
        replica = self._replica_of.pop(request, None)
        if replica is not None:
            self._counts[replica] -= 1
            if not self._counts[replica]:
                del self._counts[replica]

    def sweep(self) -> None:
        """Drop the requests cancelled before they were routed: no replica will report them completed."""
        for request, pending in list(self._pending.items()):
            if pending.future.cancelled():
                self.remove(request)
            elif pending.future.done():
                del self._pending[request]  # routed: its completion will be reported

    def forget(self, replica: str) -> None:
        """A replica died: its clauses will not end through it."""
        for request in [r for r, held in self._replica_of.items() if held == replica]:
            self.remove(request)

    def __getitem__(self, replica: str) -> int:
        return self._counts[replica]

    def __len__(self) -> int:
        return len(self._replica_of)


class VoiceAffinityRouter(RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self.in_flight = InFlight()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        hints = pending_request.kwargs if pending_request is not None else {}
        self.in_flight.sweep()
        ranks = rank_replicas(
            candidate_replicas,
            voice=hints.get("voice", ""),
            prefer=hints.get("prefer", ""),
            avoid=frozenset(hints.get("avoid", ())),
            in_flight=self.in_flight,
        )
        if ranks and pending_request is not None:
            request = pending_request.metadata.internal_request_id
            self.in_flight.add(request, ranks[0][0].replica_id.unique_id, pending_request)
        return ranks

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        self.in_flight.remove(internal_request_id)

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self.in_flight.forget(replica_id.unique_id)


def rank_replicas(
    replicas: Sequence, *, voice: str, prefer: str, avoid: frozenset[str], in_flight: InFlight | None = None,
    edge: str = EDGE,
) -> list[list]:
    """The ranks for one clause, the top choice alone in the first (a pure function: tested without Ray)."""
    in_flight = InFlight() if in_flight is None else in_flight

    def queued(replica) -> int:
        others = sum(n for sender, n in _stats(replica).get("awaiting_by_edge", {}).items() if sender != edge)
        return others + in_flight[_id(replica)]

    def standing(replica) -> tuple[bool, int, float]:
        """Holders of the voice first, then the fewest queued; equals in random order, so bursts spread."""
        return (not (voice and voice in _stats(replica).get("voices", ())), queued(replica), random.random())

    usable = [r for r in replicas if _id(r) not in avoid]
    shunned = [r for r in replicas if _id(r) in avoid]
    pinned = [r for r in usable if prefer and _id(r) == prefer]
    rest = [r for r in usable if r not in pinned]
    least = min((queued(r) for r in rest), default=0)
    near = [r for r in rest if queued(r) <= least + SLACK]
    busier = sorted((r for r in rest if r not in near), key=queued)

    ordered = [*pinned, *sorted(near, key=standing), *busier]
    if not ordered:
        return [shunned] if shunned else []
    return [rank for rank in ([ordered[0]], ordered[1:], shunned) if rank]


def _id(replica) -> str:
    return replica.replica_id.unique_id


def _stats(replica) -> dict:
    return replica.routing_stats or {}
