"""A session with ``text_streaming``: an utterance's text goes to one engine stream as it arrives.

The speech source is scripted: its text stream emits one chunk per piece of
text it receives (the value: the piece's number), so the test sees which text
went where, and in what order the audio came.
"""

from __future__ import annotations

import asyncio

import numpy as np

from cosyvoice import AudioStream
from cosyvoice.text_stream import TextStream
from cosyvoice.timing import spread, word_spans
from signaling.session import Session, Transport, VoiceSettings
from support.waiting import until
from tests.unit.scripted import CHUNK, RATE, Script


class StreamingScript(Script):
    """:class:`Script`, and text streams whose pieces it records (one chunk per piece); once its text is
    closed, a stream times its words (one unit each) over its audio."""

    def __init__(self, streams: bool = True) -> None:
        super().__init__()
        self.streams = streams
        self.streamed: list[list[str]] = []  # per text stream: its first text, then each piece

    def streams_text(self, voice: VoiceSettings) -> bool:
        return self.streams

    def open_text(self, text: str, voice: VoiceSettings, more: TextStream) -> AudioStream:
        pieces = [text]
        self.streamed.append(pieces)

        async def produce(emit) -> None:
            await emit(np.full(CHUNK, 1.0, np.float32))
            async for piece in more.pieces():
                pieces.append(piece)
                await emit(np.full(CHUNK, float(len(pieces)), np.float32))
            whole = "".join(pieces)
            spans = word_spans(whole)
            await emit(np.zeros(0, np.float32), spread(whole, spans, [1] * len(spans), 0.0, len(pieces) * CHUNK / RATE))

        return AudioStream(RATE, produce)


async def test_one_stream_per_utterance_fed_as_text_arrives():
    script = StreamingScript()
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, text_streaming=True)
    session.say("Hello there, ")
    session.say("this is ")
    await until(lambda: script.streamed and len(script.streamed[0]) == 2, 2, "the second piece")
    session.say("one reply.", flush=True)
    await until(lambda: len(script.streamed[0]) == 3 and session.buffer.buffered >= 3 * CHUNK, 2, "the audio")
    assert script.streamed == [["Hello there, ", "this is ", "one reply."]]
    assert script.opened == []  # no clause went on its own
    assert [float(session.buffer.read(CHUNK).samples[0]) for _ in range(3)] == [1.0, 2.0, 3.0]
    await session.close()


async def test_a_mark_ends_the_stream_and_the_next_text_opens_another():
    script = StreamingScript()
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, text_streaming=True)
    session.say("First part of it, ")
    session.mark("m1")
    session.say("then the rest.", flush=True)
    await until(lambda: len(script.streamed) == 2 and session.buffer.buffered >= 2 * CHUNK, 2, "two streams")
    assert script.streamed == [["First part of it, "], ["then the rest."]]
    await session.close()


async def test_the_words_of_a_stream_after_a_mark_follow_the_first_stream_s_text():
    """A stream's pieces are text spoken: the next stream's text is looked for after them, not inside them."""
    script = StreamingScript()
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, text_streaming=True)
    utterance = session.say("First, ")
    session.say("say it again. ")
    await until(lambda: script.streamed and len(script.streamed[0]) == 2, 2, "the second piece")
    session.mark("m1")
    session.say("say it again.", flush=True)
    await until(lambda: len(script.streamed) == 2 and session.buffer.buffered >= 3 * CHUNK, 2, "two streams")
    await until(lambda: len(utterance.words) == len(word_spans(utterance.text)), 2, "both streams' words")
    assert [(w.char_start, w.char_end) for w in utterance.words] == word_spans(utterance.text)
    await session.close()


async def test_punctuation_first_waits_for_speakable_text():
    script = StreamingScript()
    session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, text_streaming=True)
    session.say("... ")
    await asyncio.sleep(0.05)
    assert script.streamed == []
    session.say("well, yes.", flush=True)
    await until(lambda: script.streamed, 2, "the stream")
    assert script.streamed[0][0] == "well, yes." and script.opened == []  # the splitter drops the dots
    await session.close()


async def test_clause_by_clause_without_the_option_or_the_engines_support():
    for option, streams in ((False, True), (True, False)):
        script = StreamingScript(streams=streams)
        session = Session(script, transport=Transport.WEBSOCKET, output_rate=RATE, text_streaming=option)
        session.say("Hello there, this is one reply. And a second sentence.", flush=True)
        await until(lambda: script.opened and not session._jobs.qsize() and script.finished == script.opened, 2, "the clauses")
        assert script.streamed == [] and len(script.opened) > 1, script.opened
        await session.close()
