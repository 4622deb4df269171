"""A session's events WebSocket on any edge: a real local Ray cluster on loopback, one replica, two edges with keys.

The session lives on one edge; watchers open its events socket on the other, which relays the owner's.
Skipped only where Ray is not installed (``pip install 'cosyvoice-gateway[ray]'``; scripts/setup.sh does).
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from gateway.settings import Settings  # noqa: E402
from support.servers import ServerThread  # noqa: E402
from support.waiting import wait_until  # noqa: E402
from tests.fleet_cluster import fleet  # noqa: E402
from tests.test_ws_session import Listener  # noqa: E402

APP = "fleet-events"  # not test_fleet.py's: the two may run at once
KEY, OTHER_TENANT = "key-of-tenant-one", "key-of-tenant-two"
SENTENCE = "Thanks for holding, I have your order here."


def settings_for(edge_url: str = "") -> Settings:
    return Settings.model_validate({
        "engine": {"backend": "ray", "ray_app": APP},
        "embedded": {"workers": 1},
        "pool": {"min_replicas": 1, "max_replicas": 1, "start_timeout": 60.0, "edge_url": edge_url},
        "auth": {"api_keys": [KEY, OTHER_TENANT]},
    })  # fmt: skip


@pytest.fixture(scope="module")
def edges():
    """Two edges of one pool, each listing its sessions in the cluster's directory."""
    with fleet(APP, settings_for) as edges:
        yield edges


def open_session(owner: ServerThread, other: ServerThread) -> Listener:
    """A WebSocket session on ``owner``, once ``other`` finds it in the directory."""
    listener = Listener(owner.url, query=f"format=pcm&sample_rate=24000&api_key={KEY}")
    found = lambda: httpx.get(f"{other.url}/v1/sessions/{listener.session_id}", headers=bearer(KEY)).status_code == 200  # noqa: E731
    wait_until(found, 5, "the other edge finds the session (published every 0.5 s)")
    return listener


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def watch(edge: ServerThread, session_id: str, key: str | None = KEY, way: str = "header") -> ClientConnection:
    """An events socket on ``edge``, presenting ``key`` (or none) the ``way`` a client may."""
    url = edge.url.replace("http", "ws") + f"/v1/sessions/{session_id}/events"
    if key is None:
        return connect(url)
    if way == "query":
        return connect(f"{url}?api_key={key}")
    if way == "subprotocol":
        return connect(url, subprotocols=[f"bearer.{key}"])
    return connect(url, additional_headers=bearer(key))


def drained(socket: ClientConnection) -> tuple[list[dict], int | None, str | None]:
    """Every message until the server closes the socket, and its close code and reason."""
    messages = []
    with socket:
        try:
            while True:
                messages.append(json.loads(socket.recv(timeout=30)))
        except ConnectionClosed:
            pass
    return messages, socket.close_code, socket.close_reason


def watchers(edge: ServerThread, session_id: str) -> int:
    """The owner's event watchers of a session (each relayed socket holds one there)."""
    session = edge.app.state.sessions.get(session_id)
    return sum(subscription.watcher for subscription in session.events._subscribers) if session else 0


def test_a_watcher_on_another_edge_gets_the_owners_events_in_order_and_its_close(edges: list[ServerThread]) -> None:
    owner, other = edges
    listener = open_session(owner, other)
    try:
        direct, relayed = watch(owner, listener.session_id), watch(other, listener.session_id)
        listener.send(type="text", text=SENTENCE, flush=True)
        _, done = listener.event("utterance.done", timeout=30)
        assert httpx.delete(f"{owner.url}/v1/sessions/{listener.session_id}", headers=bearer(KEY)).status_code == 204
        (expected, code, reason), got = drained(direct), drained(relayed)
    finally:
        listener.close()
    assert got == (expected, code, reason), "the relayed socket says what the owner's says, and closes as it does"
    kinds = [message["type"] for message in expected]
    assert kinds[0] == "utterance.started" and kinds[-1] == "session.closed", kinds
    assert kinds.index("utterance.done") > max(i for i, kind in enumerate(kinds) if kind == "word"), kinds
    assert expected[kinds.index("utterance.done")]["utterance_id"] == done["utterance_id"]
    assert (code, reason) == (1000, "")


def test_the_relayed_socket_carries_the_key_however_it_came_and_ends_with_its_client(edges: list[ServerThread]) -> None:
    owner, other = edges
    listener = open_session(owner, other)
    try:
        query, subprotocol = (watch(other, listener.session_id, way=way) for way in ("query", "subprotocol"))
        assert subprotocol.subprotocol == f"bearer.{KEY}", "the owner's choice of subprotocol reaches the client"
        with watch(other, listener.session_id):
            wait_until(lambda: watchers(owner, listener.session_id) == 3, 5, "three watchers at the owner")
        # The client left: the relay closed its socket to the owner, whose watcher ends at the next event.
        listener.send(type="text", text="Hello.", flush=True)
        wait_until(lambda: watchers(owner, listener.session_id) == 2, 10, "the owner's watcher released")
        listener.event("utterance.done", timeout=30)
        refusals = [
            drained(watch(edge, listener.session_id, key))
            for key in (None, "not-a-key", OTHER_TENANT) for edge in (other, owner)
        ]  # fmt: skip
        assert refusals == [([], 1008, "missing or invalid API key")] * 4 + [([], 1008, "no such session")] * 2
        assert httpx.delete(f"{other.url}/v1/sessions/{listener.session_id}", headers=bearer(KEY)).status_code == 204
        (messages, code, _), got = drained(query), drained(subprotocol)
    finally:
        listener.close()
    kinds = [message["type"] for message in messages]
    assert kinds[0] == "utterance.started" and kinds[-2:] == ["utterance.done", "session.closed"], kinds
    assert code == 1000 and got == (messages, code, "")


def test_a_watcher_for_an_unknown_session_is_refused_on_either_edge_alike(edges: list[ServerThread]) -> None:
    owner, other = edges
    assert drained(watch(other, "unknown-session")) == drained(watch(owner, "unknown-session")) == ([], 1008, "no such session")
