"""Clause segmentation for early first audio, whole or incremental."""

from __future__ import annotations

import time

import pytest

from cosyvoice.text import ClauseOptions, ClauseSplitter, split_clauses


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
    clauses = split_clauses(text, ClauseOptions(max_chars=100))
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


def test_no_clause_is_longer_than_max_chars_even_when_punctuation_follows() -> None:
    text = " ".join(["word"] * 100) + ". Then a short one."
    clauses = split_clauses(text, ClauseOptions(max_chars=100))
    assert all(len(clause) <= 100 for clause in clauses), [len(clause) for clause in clauses]
    assert clauses[-1] == "Then a short one."


@pytest.mark.parametrize("piece", [1, 2, 7, 64])
def test_clauses_do_not_depend_on_how_the_text_arrives(piece: int) -> None:
    text = ("Well, Mr. Brown said: \"it costs 3.50!\" 你好，世界。 " + "unpunctuated words " * 30 + "The end... ") * 3
    splitter = ClauseSplitter(ClauseOptions(max_chars=60))
    clauses: list[str] = []
    for start in range(0, len(text), piece):
        clauses += splitter.feed(text[start : start + piece])
    assert clauses + splitter.flush() == split_clauses(text, ClauseOptions(max_chars=60))


@pytest.mark.parametrize(
    "unit",
    ["x", "word ", ".", '"', "Hi. ", "a, "],
    ids=["letters", "words", "dots", "quotes", "sentences", "commas"],
)
def test_splitting_hostile_text_takes_linear_time(unit: str) -> None:
    """Before, each clause rescanned and copied all pending text: 100 KB of words took 3.3 s, 200 KB 13 s."""
    text = unit * (200_000 // len(unit))
    started = time.perf_counter()
    clauses = split_clauses(text)
    elapsed = time.perf_counter() - started
    # Linear work is ~40 ms on this CPU (sentences: one Python step per clause); 1 s leaves room for a
    # loaded shared core while staying far below the quadratic cost.
    assert elapsed < 1.0, f"{elapsed:.2f} s for 200 KB"
    assert all(len(clause) <= 240 for clause in clauses)


def test_feeding_one_character_at_a_time_scans_each_character_once() -> None:
    """Token-by-token text: a pending clause is not rescanned for every token (before: 240 rescans of it)."""
    text = "x" * 239 + " " + ("word " * 40_000)
    splitter = ClauseSplitter()
    started = time.perf_counter()
    for start in range(0, len(text), 4):
        splitter.feed(text[start : start + 4])
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s for 200 KB in 4-character pieces"  # linear: ~0.1 s
