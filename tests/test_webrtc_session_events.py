"""The session protocol on a WebRTC data channel: what happened before the channel opened is not lost."""

from __future__ import annotations

import time

from gateway.client import WebRTCCall
from support.servers import ServerThread


async def test_text_in_the_offer_starts_an_utterance_the_data_channel_sees(gateway: ServerThread) -> None:
    async with WebRTCCall(gateway.url, text="Words that came with the offer.") as call:
        await call.wait_for("utterance.done", timeout=60)
        kinds = [event["type"] for event in call.events]
        assert kinds[0] == "session.created", kinds
        assert kinds.index("utterance.started") < kinds.index("utterance.first_audio") < kinds.index("utterance.done")
        assert call.events[0]["session"]["voice"] == "joe"


async def test_direct_replies_on_the_data_channel_carry_the_session_and_time(gateway: ServerThread) -> None:
    async with WebRTCCall(gateway.url) as call:
        await call.send({"type": "ping", "id": "p1"})
        await call.say("Hello.")
        pong = await call.wait_for("pong", id="p1")
        accepted = await call.wait_for("text.accepted")
        created = call.events[0]
        for message in (created, pong, accepted):
            assert message["session_id"] == call.session_id, message
            assert abs(message["time"] - time.time()) < 30, message  # Unix seconds: generous for a loaded CI machine
