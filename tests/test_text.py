"""Clause segmentation for early first audio, whole or incremental."""

from __future__ import annotations

import pytest

from cosyvoice.text import ClauseSplitter, split_clauses


@pytest.mark.parametrize(
    "text,clauses",
    [
        (
            "Hello there, how are you doing today? I am fine, thank you.",
            ["Hello there,", "how are you doing today?", "I am fine, thank you."],
        ),
        ("Hi, I am Joe.", ["Hi, I am Joe."]),  # a first clause too short to cut
        ("Mr. Smith paid 3.50 dollars. Then he left.", ["Mr. Smith paid 3.50 dollars.", "Then he left."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("Wait... what?! Really.", ["Wait...", "what?!", "Really."]),
        ("你好，我是实时语音。今天天气很好！", ["你好，我是实时语音。", "今天天气很好！"]),
        ("Line one\nLine two", ["Line one", "Line two"]),
        ("...", []),
        ("", []),
    ],
)
def test_split_clauses(text: str, clauses: list[str]) -> None:
    assert split_clauses(text) == clauses


def test_long_text_without_punctuation_is_cut_at_spaces() -> None:
    text = " ".join(["word"] * 200)
    clauses = split_clauses(text, max_chars=100)
    assert all(len(clause) <= 100 for clause in clauses)
    assert " ".join(clauses) == text


def test_incremental_feeding_matches_whole_text() -> None:
    text = "Hello there, how are you doing today? I am fine. Mr. Jones owes 2.5 million. Bye"
    splitter = ClauseSplitter()
    clauses: list[str] = []
    for piece in [text[i : i + 3] for i in range(0, len(text), 3)]:
        clauses += splitter.feed(piece)
    clauses += splitter.flush()
    assert clauses == split_clauses(text)


def test_a_clause_is_released_as_soon_as_it_is_certain() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Good morning, every") == ["Good morning,"]
    assert splitter.feed("one. The") == ["everyone."]
    assert splitter.feed(" price is 3.") == []  # "3." could still become "3.5"
    assert splitter.feed("5 euros") == []
    assert splitter.pending == "The price is 3.5 euros"
    assert splitter.flush() == ["The price is 3.5 euros"]


def test_reset_drops_pending_text_and_restarts_the_utterance() -> None:
    splitter = ClauseSplitter()
    splitter.feed("Hello there, partial")
    splitter.reset()
    assert splitter.pending == ""
    assert splitter.feed("Good evening, all of you. ") == ["Good evening,", "all of you."]
