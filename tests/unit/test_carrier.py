"""The carrier loop on an in-memory wire: marks count once echoed, bad messages cost only themselves, stop ends all."""

from __future__ import annotations

import asyncio
import json

from signaling.carrier import CarrierCall
from signaling.messages import Error, UtteranceDone, UtteranceState
from signaling.serializers.base import Message
from signaling.serializers.twilio import TwilioSerializer
from signaling.session import Session, Transport
from support.waiting import first, until
from tests.unit.scripted import RATE, Script

START = {"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1", "customParameters": {"text": "Hello."}}}


class MemoryCall(CarrierCall):
    """A Twilio call whose wire is two lists: what the far end will send, and what we sent."""

    def __init__(self) -> None:
        super().__init__(TwilioSerializer(), lead=0.0, barge_in=False)
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self.sent: list[dict] = []
        self.closed = 0

    async def read(self) -> Message | None:
        return await self.inbox.get()

    async def write(self, message: Message) -> None:
        self.sent.append(json.loads(message))

    async def close(self) -> None:
        self.closed += 1

    def far_end(self, message: dict | str | None) -> None:
        self.inbox.put_nowait(json.dumps(message) if isinstance(message, dict) else message)

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for m in self.sent if m["event"] == "mark"]


async def test_marks_count_once_echoed_and_a_stop_ends_the_call() -> None:
    call = MemoryCall()
    call.far_end(START)
    start = await call.await_start(1.0)
    session = Session(Script(), transport=Transport.TWILIO, output_rate=RATE)
    events = session.events.subscribe()
    serving = asyncio.ensure_future(call.serve(session, start.parameters["text"]))
    await until(lambda: any(name.startswith("end-") for name in call.marks()), 5, "the utterance's end mark sent")
    assert all(m["streamSid"] == "MZ1" for m in call.sent)
    assert [m["event"] for m in call.sent].count("media") == 150 // 20 + 1, "150 ms of audio in 20 ms frames"
    call.far_end("{not json")  # costs the far end this message only
    error = await first(events, lambda e: isinstance(e, Error), 5, "the malformed message reported")
    assert error.message == "malformed Twilio message ignored: a Twilio message that is not a JSON object"
    (utterance,) = session.utterances.values()
    assert utterance.state is UtteranceState.SPEAKING, "played only once Twilio says so"
    (end,) = [name for name in call.marks() if name.startswith("end-")]
    call.far_end({"event": "mark", "streamSid": "MZ1", "mark": {"name": end}})
    await first(events, lambda e: isinstance(e, UtteranceDone), 5, "the utterance done once its mark came back")
    assert utterance.state is UtteranceState.DONE
    call.far_end({"event": "stop", "streamSid": "MZ1"})
    async with asyncio.timeout(5):
        await serving
    assert session.closed and session.close_reason == "call ended" and call.closed == 1
    assert call.ignored_messages == 1


async def test_a_cancel_clears_what_the_far_end_holds() -> None:
    call = MemoryCall()
    call.far_end(START)
    await call.await_start(1.0)
    session = Session(Script(), transport=Transport.TWILIO, output_rate=RATE)
    serving = asyncio.ensure_future(call.serve(session))
    await asyncio.sleep(0)
    session.cancel("barge-in")
    await until(lambda: {"event": "clear", "streamSid": "MZ1"} in call.sent, 5, "a clear sent")
    await session.close("done")
    async with asyncio.timeout(5):
        await serving  # the session closed on our side: the call ends with it
    assert call.closed == 1
