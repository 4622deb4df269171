"""A WebSocket held by another edge, relayed: the client's socket here, one from here to the owner.

The owner's socket opens with the client's handshake as it came (its key, whether a header, the
``api_key`` query or a ``bearer.`` subprotocol: the owner checks it) and the headers the caller adds;
the client is accepted with the subprotocol the owner chose. Each direction carries one message at a
time and the first side to close closes the other, with the owner's close code and reason passed on.
A client that stops reading stops the relay reading the owner (it holds at most one message), and is
let go after ``SEND_TIMEOUT`` as the owner's own sockets are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import CloseCode as WireCloseCode

from gateway.streaming import SEND_TIMEOUT
from signaling.closecodes import CloseCode
from signaling.lifecycle import race

log = logging.getLogger("gateway.relay")

# What the client's handshake says about its own hop (the relay's hop makes its own), not about the request.
HANDSHAKE = {b"host", b"connection", b"upgrade", b"content-length"} | {
    b"sec-websocket-" + name for name in (b"key", b"version", b"extensions", b"protocol")
}


async def relay_websocket(url: str, headers: list[tuple[bytes, bytes]], scope: Scope, receive: Receive, send: Send) -> None:
    """Answer the WebSocket in ``scope`` with the one at ``url`` (``ws://`` or ``wss://``), opened with ``headers``."""
    await receive()  # websocket.connect
    passed = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in headers if key not in HANDSHAKE]
    try:
        # Loopback or the cluster's network: no proxy; events are small JSON, not worth deflating twice.
        owner = await connect(url, additional_headers=passed, subprotocols=scope.get("subprotocols") or None,
                              user_agent_header=None, proxy=None, compression=None, max_queue=1)  # fmt: skip
    except (OSError, TimeoutError, InvalidHandshake) as error:  # it died: the directory forgets it within EXPIRY
        log.warning("session's edge %s unreachable: %s", url, error)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": int(CloseCode.TRY_AGAIN_LATER), "reason": "the session's edge is unreachable"})
        return
    async with owner:
        await send({"type": "websocket.accept", "subprotocol": owner.subprotocol})
        # Each side ends quietly when its far end leaves: an error here is a fault, for the server to log.
        (await race(_to_client(owner, send), _to_owner(receive, owner))).value()


async def _to_client(owner: ClientConnection, send: Send) -> None:
    try:
        async for message in owner:
            async with asyncio.timeout(SEND_TIMEOUT):
                await send({"type": "websocket.send", "text" if isinstance(message, str) else "bytes": message})
    except ConnectionClosed:
        pass  # the owner's close frame (if it sent one) says how
    except TimeoutError:
        return  # a watcher that stopped reading is let go
    close = owner.protocol.close_rcvd
    if close is None:  # no close frame: the owner's edge died or the link broke
        code, reason = CloseCode.INTERNAL_ERROR, "the session's edge went away"
    else:  # an empty close frame reads as 1005, which no frame may carry
        code, reason = (CloseCode.NORMAL if close.code == WireCloseCode.NO_STATUS_RCVD else close.code), close.reason
    await send({"type": "websocket.close", "code": int(code), "reason": reason})


async def _to_owner(receive: Receive, owner: ClientConnection) -> None:
    while (message := await receive())["type"] == "websocket.receive":
        with contextlib.suppress(ConnectionClosed):  # the owner left: _to_client passes its close on
            await owner.send(message["text"] if message.get("text") is not None else message["bytes"])
    await owner.close()  # the client left
