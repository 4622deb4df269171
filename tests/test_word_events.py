"""``word`` events in a session's timeline, and what a cancel says the listener heard (the embedded voice)."""

from __future__ import annotations

import math

import httpx

from cosyvoice.timing import word_spans
from support.servers import ServerThread
from support.waiting import wait_until
from tests.test_ws_session import REPLY, Listener

FRAME_MS = 20  # the session's audio frame: events and frames share one paced socket
LEAD_FRAMES = 5  # the WebSocket sends 100 ms ahead of real time (sessions.lead_ms): a burst at the start


def _words(listener: Listener, before: float = float("inf")) -> list[tuple[float, dict]]:
    return [(at, e) for at, e in list(listener.events) if e["type"] == "word" and at < before]


def test_words_arrive_as_they_are_played(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    try:
        listener.send(type="text", text=REPLY, flush=True)
        _, done = listener.event("utterance.done")
        words = _words(listener)
        assert [(w["char_start"], w["char_end"]) for _, w in words] == word_spans(REPLY)
        assert all(w["word"] == REPLY[w["char_start"] : w["char_end"]] for _, w in words)
        assert {w["source"] for _, w in words} == {"aligned"} and {w["utterance_id"] for _, w in words} == {"u1"}
        for (_, word), (_, following) in zip(words, words[1:]):
            assert word["start_ms"] < word["end_ms"] <= following["start_ms"]
        assert words[-1][1]["end_ms"] <= done["audio_ms"]
        # In step with playback: a word's event comes with the frame that holds its start, not before, not later.
        arrivals = [at for at, _ in listener.frames]
        for at, word in words:
            sent = sum(1 for frame_at in arrivals if frame_at <= at)  # frames the client had when the word came
            holding = math.ceil(word["start_ms"] / FRAME_MS)  # frames up to the one its start falls in
            assert holding <= sent <= holding + LEAD_FRAMES + 1, (word, sent)
    finally:
        listener.close()


def test_a_cancel_reports_the_words_heard_up_to_the_cut(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    text = " ".join([REPLY] * 4)
    try:
        listener.send(type="text", text=text, flush=True)
        wait_until(lambda: len(listener.frames) > 100, 30, "two seconds of audio")
        listener.send(type="cancel")
        cancelled_at, cancelled = listener.event("utterance.cancelled")
        heard = cancelled["heard_text"]
        assert heard and text.startswith(heard) and len(heard) < len(text), cancelled
        # The heard text ends with the last word announced before the cut, and every announced word began before it.
        words = _words(listener, before=cancelled_at)
        assert len(heard) == words[-1][1]["char_end"]
        assert all(w["start_ms"] < cancelled["played_ms"] for _, w in words)
        # The played position lies within the last word or the pause after it (a sentence's pause is under 1.5 s).
        assert cancelled["played_ms"] - words[-1][1]["start_ms"] < 1500
        assert not [w for at, w in _words(listener) if at > cancelled_at]
    finally:
        listener.close()


def test_the_control_api_cancel_answers_with_the_heard_text(gateway: ServerThread) -> None:
    listener = Listener(gateway.url)
    sid = listener.session_id
    text = " ".join([REPLY] * 3)
    try:
        httpx.post(f"{gateway.url}/v1/sessions/{sid}/say", json={"text": text, "flush": True}).raise_for_status()
        wait_until(lambda: len(listener.frames) > 75, 30, "a second and a half of audio")
        answer = httpx.post(f"{gateway.url}/v1/sessions/{sid}/cancel").json()
        assert answer["cancelled"] == ["u1"]
        (utterance,) = answer["utterances"]
        assert utterance["state"] == "cancelled" and 1000 <= utterance["played_ms"] < utterance["audio_ms"]
        heard = utterance["heard_text"]
        assert heard and text.startswith(heard) and len(heard) < len(text), utterance
        # Just under 2 words a second at least (this voice says about 3): the heard text grows with the played time.
        assert len(heard.split()) >= utterance["played_ms"] / 1000 * 1.5, utterance
    finally:
        listener.close()
