"""The engine pool on Ray Serve: a real local cluster on loopback, two embedded-voice replicas, an edge.

Skipped only where Ray is not installed (``pip install 'cosyvoice-gateway[ray]'``; scripts/setup.sh does).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from cosyvoice import Engine, EngineFailure, SynthesisRequest  # noqa: E402
from cosyvoice.pool.app import PoolScaling, pool_application  # noqa: E402
from cosyvoice.pool.client import PoolEngine, PoolOptions  # noqa: E402
from cosyvoice.pool.router import InFlight, rank_replicas  # noqa: E402
from cosyvoice.pool.wire import EDGE  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from support.servers import ServerThread  # noqa: E402
from support.waiting import wait_until  # noqa: E402
from tests.audio_checks import assert_speech_like  # noqa: E402
from tests.fleet_cluster import fleet  # noqa: E402
from tests.test_ws_session import Listener  # noqa: E402

APP = "fleet-test"
SENTENCES = [
    "Thanks for holding, I have your order here.",
    "It left our warehouse on Monday morning.",
    "The courier expects to deliver it on Thursday.",
    "You will get a text message with a time slot.",
    "If nobody is home, they will try again on Friday.",
    "Is there anything else I can help you with today?",
]


def settings_for(app: str, edge_url: str = "") -> Settings:
    return Settings.model_validate({
        "engine": {"backend": "ray", "ray_app": app},
        "embedded": {"workers": 1},  # one Piper process per replica: the two replicas share the 2 cores
        "pool": {
            "min_replicas": 2, "max_replicas": 2, "stall_timeout": 5.0, "start_timeout": 60.0, "edge_url": edge_url,
        },
        # Synthesis runs at most a second ahead of playback, so the replica dies with clauses still to speak.
        "session": {"max_lead_seconds": 1.0},
    })  # fmt: skip


@pytest.fixture(scope="module")
def edges():
    """Two edges of one pool, each listing its sessions in the cluster's directory."""
    # Replicas report their autoscaling metrics every 10 s by default: the scaling test would wait minutes.
    env = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}
    with fleet(APP, lambda url: settings_for(APP, url), env=env) as edges:
        yield edges


@pytest.fixture
def edge(edges: list[ServerThread]) -> ServerThread:
    return edges[0]


def replica_load(replica: str):
    """One replica's own figures (the router sends a call that prefers it there while it has room)."""
    handle = serve.get_deployment_handle("EngineReplica", app_name=APP)
    load = handle.load.remote(prefer=replica).result(timeout_s=10)
    assert load.replica == replica, "the router honours prefer= for an idle replica"
    return load


def live_replicas() -> list[str]:
    status = serve.status().applications[APP].deployments["EngineReplica"]
    return [name.rsplit("#", 1)[-1] for name in replica_actor_names()] if status.status == "HEALTHY" else []


def replica_actor_names() -> list[str]:
    return [
        actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#")
    ]  # fmt: skip


def sentences_spoken(events: list[dict], text: str) -> set[int]:
    """Which sentences of ``text`` have words that began to play."""
    starts = [text.index(sentence) for sentence in SENTENCES]
    return {max(i for i, start in enumerate(starts) if start <= word["char_start"]) for word in events}


def test_a_session_speaks_through_the_pool_with_its_clauses_on_one_replica(edge: ServerThread) -> None:
    engine = edge.engine
    before = {replica: load.served for replica, load in engine.load.items()}
    listener = Listener(edge.url)
    try:
        listener.send(type="text", text=" ".join(SENTENCES[:3]), flush=True)
        listener.event("utterance.done", timeout=30)
        assert_speech_like(listener.audio(), 24000, min_seconds=4, max_seconds=15)
    finally:
        listener.close()
    served = {replica: load.served - before.get(replica, 0) for replica, load in engine.load.items()}
    scrape = httpx.get(edge.url + "/metrics", timeout=10).text
    for replica in served:
        assert f'gateway_pool_streams{{replica="{replica}"}} 0.0' in scrape
        assert f'gateway_pool_awaiting_first_audio{{replica="{replica}"}} 0.0' in scrape
    # Three sentences, four clauses (the first is cut early at its comma), all on one replica.
    assert [count for count in served.values() if count] == [4], f"one replica spoke every clause: {served}"


def test_a_replica_killed_mid_utterance_costs_at_most_one_clause(edge: ServerThread) -> None:
    engine = edge.engine
    text = " ".join(SENTENCES)
    failovers = engine.failovers
    listener = Listener(edge.url)
    try:
        listener.send(type="text", text=text, flush=True)
        wait_until(lambda: len(listener.frames) > 50, 20, "a second of audio")
        # A clause takes the replica ~200 ms here: polled every 2 ms, the kill lands while it is spoken.
        wait_until(lambda: any(load.streams for load in engine.load.values()), 10, "a clause in flight", 0.002)
        (victim,) = [r for r, load in engine.load.items() if load.streams]
        (name,) = [name for name in replica_actor_names() if name.endswith("#" + victim)]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed_at = time.monotonic() - listener.started
        _, done = listener.event("utterance.done", timeout=40)
        assert done["state"] == "done", done
        words = [event for at, event in listener.events if event["type"] == "word"]
        spoken = sentences_spoken(words, text)
        assert len(spoken) >= len(SENTENCES) - 1 and len(SENTENCES) - 1 in spoken, spoken
        assert any(at > killed_at for at, _ in listener.frames), "audio went on after the kill"
        assert engine.failovers > failovers, "the edge saw the replica go"
        errors = [event for _, event in listener.events if event["type"] == "error"]
        assert not errors, errors
    finally:
        listener.close()
    # Ray Serve replaces the dead replica.
    wait_until(lambda: len(replica_actor_names()) == 2 and victim not in live_replicas(), 60, "a new replica")


def test_cancel_reaches_the_replica_and_nothing_is_left(edge: ServerThread) -> None:
    engine = edge.engine
    listener = Listener(edge.url)
    try:
        listener.send(type="text", text=" ".join(SENTENCES * 3), flush=True)
        wait_until(lambda: any(load.streams for load in engine.load.values()), 20, "a clause in flight")
        (replica,) = [r for r, load in engine.load.items() if load.streams]
        cancelled = replica_load(replica).cancelled
        listener.send(type="cancel")
        listener.event("utterance.cancelled")
        wait_until(lambda: replica_load(replica).cancelled > cancelled, 10, "the replica's stream cancelled")
    finally:
        listener.close()
    wait_until(lambda: engine.busy == 0, 10, "no streams from the edge")
    loads = [replica_load(name.rsplit("#", 1)[-1]) for name in replica_actor_names()]
    assert [(load.streams, load.awaiting_first_audio) for load in loads] == [(0, 0)] * 2, loads
    # A Piper worker finishes (or drops) the sentence it holds within a clause's time: then all are idle.
    idle = lambda: all(replica_load(name.rsplit("#", 1)[-1]).busy == 0 for name in replica_actor_names())  # noqa: E731
    wait_until(idle, 5, "every replica's engine idle")


def test_a_session_on_one_edge_is_steered_through_the_other(edges: list[ServerThread]) -> None:
    owner, other = edges
    listener = Listener(owner.url)
    try:
        wait_until(lambda: httpx.get(f"{other.url}/v1/sessions/{listener.session_id}").status_code == 200, 5,
                   "the other edge finds the session (published every 0.5 s)")  # fmt: skip
        said = httpx.post(f"{other.url}/v1/sessions/{listener.session_id}/say", json={"text": SENTENCES[0]}, timeout=10)
        assert said.status_code == 200, said.text
        httpx.post(f"{other.url}/v1/sessions/{listener.session_id}/flush", timeout=10).raise_for_status()
        listener.event("utterance.done", timeout=30, utterance_id=said.json()["utterance_id"])
        assert_speech_like(listener.audio(), 24000, min_seconds=1.5, max_seconds=6)
        assert httpx.delete(f"{other.url}/v1/sessions/{listener.session_id}", timeout=10).status_code == 204
        wait_until(lambda: owner.app.state.sessions.get(listener.session_id) is None, 5, "the owner closed it")
    finally:
        listener.close()
    assert httpx.get(f"{other.url}/v1/sessions/unknown-session").status_code == 404


def scripted_voice(produce):
    """An engine factory whose engine's clauses are ``produce(engine, request, emit)`` (nested, so Ray pickles
    the factory and the function by value)."""

    def make() -> Engine:
        from cosyvoice import Capabilities, Engine, Mode  # a class body's names are not pickled with it

        class Scripted(Engine):
            capabilities = Capabilities(
                engine="scripted", model="none", modes=frozenset({Mode.SFT}), sample_rate=16000,
                voices=("joe",), default_voice="joe",
            )  # fmt: skip

            async def start(self) -> None:
                self._ready = True

            async def close(self) -> None:
                pass

            async def _produce(self, request, emit) -> None:
                await produce(self, request, emit)

        return Scripted()

    return make


def broken_voice():
    """A voice that fails every clause."""

    async def fail(engine, request, emit) -> None:
        raise RuntimeError("the voice broke")

    return scripted_voice(fail)


def test_a_replica_whose_engine_fails_gives_a_synthesis_error_not_a_ray_error(edge: ServerThread) -> None:
    serve.run(pool_application(broken_voice(), PoolScaling()), name="fleet-broken", route_prefix=None)

    async def speak() -> None:
        engine = PoolEngine(PoolOptions(app="fleet-broken", stall_timeout=5))
        await engine.start()
        with pytest.raises(EngineFailure, match="the voice broke"):
            async for _ in engine.synthesize(SynthesisRequest(text="Hello there.")):
                pass

    try:
        asyncio.run(speak())
    finally:
        serve.delete("fleet-broken")


def replica(name: str, voices=(), awaiting: int = 0, *, ours: int = 0) -> SimpleNamespace:
    """A replica as the router sees it: its id and its last report (``awaiting`` clauses from another edge,
    ``ours`` from this one)."""
    by_edge = {"other-edge": awaiting, EDGE: ours}
    stats = {"voices": list(voices), "awaiting_first_audio": awaiting + ours, "awaiting_by_edge": by_edge}
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), routing_stats=stats)


def names(ranks) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def test_routing_ranks_the_previous_replica_then_voice_holders_by_queued_first_audio() -> None:
    a, b, c = replica("a"), replica("b", ["ann"], 5), replica("c", ["ann"], 1)
    d, e = replica("d", ["ann"], 3), replica("e", awaiting=0)
    ranks = rank_replicas([a, b, c, d, e], voice="ann", prefer="a", avoid=frozenset())
    # Near the least queued (e: 0, within SLACK = 2): c holds ann, e does not; d and b are busier, d less so.
    assert names(ranks) == [["a"], ["c", "e", "d", "b"]]
    ranks = rank_replicas([a, b, c, d, e], voice="ann", prefer="c", avoid=frozenset({"c"}))
    assert sorted(names(ranks)[0] + names(ranks)[1][:1]) == ["a", "e"], "a and e: equally free, in either order"
    assert names(ranks)[1][1:] == ["d", "b"] and names(ranks)[2] == ["c"], "the replica that failed comes last"
    # A built-in voice (no prompt to hold): the least queued.
    assert names(rank_replicas([b, c, e], voice="", prefer="", avoid=frozenset())) == [["e"], ["c", "b"]]


def test_routing_counts_its_own_clauses_fresh_and_the_other_edges_as_reported() -> None:
    # a's report still shows three of this edge's clauses, which have ended since: a is free.
    a, b = replica("a", ours=3), replica("b", awaiting=1)
    assert names(rank_replicas([a, b], voice="", prefer="", avoid=frozenset())) == [["a"], ["b"]]
    mine = InFlight()
    for request in ("r1", "r2"):
        mine.add(request, "a")  # this edge's clauses on a now: 2 against b's 1 from the other edge
    assert names(rank_replicas([a, b], voice="", prefer="", avoid=frozenset(), in_flight=mine)) == [["b"], ["a"]]


def test_a_burst_of_first_clauses_spreads_over_the_replicas() -> None:
    """Clauses routed in the same instant all see one stale report: the router's own count spreads them."""
    for _ in range(20):  # equals are taken in random order: every draw must spread
        router = InFlight()
        pool = [replica("a"), replica("b")]
        for request in range(6):
            (top,), *_ = rank_replicas(pool, voice="", prefer="", avoid=frozenset(), in_flight=router)
            router.add(f"r{request}", top.replica_id.unique_id)
        assert router["a"] == router["b"] == 3
    router.remove("r0")
    router.remove("r0")  # completion reported twice counts once
    router.add("r1", "a")  # routed again (its first choice was full): still one clause
    assert len(router) == 5 and router["a"] + router["b"] == 5
    router.forget("a")
    assert router["a"] == 0 and len(router) == router["b"]


async def test_a_clause_cancelled_before_it_was_routed_leaves_no_count() -> None:
    """Ray Serve reports completion only for requests it sent: one cancelled while routing is swept instead."""
    router = InFlight()
    cancelled, routed = (SimpleNamespace(future=asyncio.get_running_loop().create_future()) for _ in range(2))
    router.add("gone", "a", cancelled)
    router.add("sent", "a", routed)
    cancelled.future.cancel()
    routed.future.set_result("replica a")
    router.sweep()
    assert router["a"] == 1, "the cancelled one is dropped; the routed one counts until it completes"
    router.remove("sent")
    assert router["a"] == 0 and len(router) == 0

def one_at_a_time_voice():
    """A voice that speaks one clause at a time, a second each: what waits for it is queued first audio."""

    async def in_turn(engine, request, emit) -> None:
        import asyncio

        import numpy as np

        if not hasattr(engine, "turn"):
            engine.turn = asyncio.Lock()
        async with engine.turn:
            await asyncio.sleep(1.0)
            await emit(np.zeros(16000, np.float32))

    return scripted_voice(in_turn)


def test_the_pool_scales_out_on_queued_first_audio(edge: ServerThread) -> None:
    """Streams alone (target 100 per replica) would never ask for a second replica; clauses waiting do."""
    app = "fleet-autoscale"
    scaling = PoolScaling(
        min_replicas=1, max_replicas=2, target_ongoing_streams=100, target_queued_first_audio=1,
        upscale_delay_s=0, downscale_delay_s=600,
    )  # fmt: skip
    serve.run(pool_application(one_at_a_time_voice(), scaling), name=app, route_prefix=None)
    running = lambda: serve.status().applications[app].deployments["EngineReplica"].replica_states.get("RUNNING", 0)  # noqa: E731

    async def load() -> None:
        engine = PoolEngine(PoolOptions(app=app, stall_timeout=30))
        await engine.start()
        assert running() == 1

        async def speak(text: str) -> None:
            async for _ in engine.synthesize(SynthesisRequest(text=text)):
                pass

        talkers = [asyncio.ensure_future(speak(" ".join(["Hello there."] * 20))) for _ in range(4)]
        try:
            deadline = time.monotonic() + 45
            while running() < 2:
                assert time.monotonic() < deadline, "no second replica for four callers queued on one"
                await asyncio.sleep(0.5)
        finally:
            for talker in talkers:
                talker.cancel()
            await asyncio.gather(*talkers, return_exceptions=True)

    try:
        asyncio.run(load())
    finally:
        serve.delete(app)


def test_demand_asks_for_replicas_enough_for_streams_and_for_queued_first_audio() -> None:
    from cosyvoice.pool.autoscaling import PoolDemand

    demand = PoolDemand(target_streams=8, target_queued=2)
    assert demand.replicas_for(streams=16, queued=0) == 2
    assert demand.replicas_for(streams=4, queued=6) == 3, "callers waiting for first audio ask for more"
    assert demand.replicas_for(streams=0, queued=0) == 0, "idle: down to the deployment's minimum"
    reported = SimpleNamespace(aggregated_metrics={"streams": {"r1": 10.0, "r2": 6.0}, "awaiting_first_audio": {"r1": 1.0}})
    assert demand(reported) == (2.0, {})
    # Before the replicas' first report: Ray Serve's own ongoing requests stand in for streams.
    assert demand(SimpleNamespace(aggregated_metrics=None, total_num_requests=24)) == (3.0, {})
