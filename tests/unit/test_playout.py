"""The playout buffer: tagged audio in, fixed frames out, and an exact account of what was reached."""

from __future__ import annotations

import numpy as np

from media.playout import PlayoutBuffer, Reached


def ramp(start: int, count: int) -> np.ndarray:
    """Distinct sample values, so a frame's contents show exactly which samples it took."""
    return np.arange(start, start + count, dtype=np.float32)


def test_frames_carry_the_pushed_samples_in_order() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.push(ramp(1, 150), "a")
    buffer.push(ramp(151, 100), "a")
    assert buffer.buffered == 250
    frames = [buffer.read(100) for _ in range(2)]
    assert np.array_equal(np.concatenate([f.samples for f in frames]), ramp(1, 200)), "a frame spans two pushes"
    assert [f.audio for f in frames] == [100, 100] and [f.underrun for f in frames] == [0, 0]
    assert buffer.buffered == 50 and buffer.played == {"a": 200}
    last = buffer.read(100)
    assert np.array_equal(last.samples[:50], ramp(201, 50)) and not last.samples[50:].any()
    assert last.audio == 50 and last.underrun == 50, "the utterance has not ended: the gap is an underrun"
    assert buffer.buffered == 0 and buffer.underrun_total == 50


def test_silence_before_the_first_sample_and_after_the_end_is_no_underrun() -> None:
    buffer = PlayoutBuffer(8000)
    waiting = buffer.read(160)  # latency: nothing of the utterance has played yet
    assert waiting.audio == 0 and waiting.underrun == 0 and waiting.tags == [] and buffer.playing is None
    buffer.push(ramp(1, 100), "a")
    assert buffer.read(160).underrun == 60 and buffer.playing == "a"
    assert buffer.read(160).underrun == 160, "still playing: the listener hears a gap"
    buffer.push(ramp(1, 40), "a")
    buffer.end("a")
    ending = buffer.read(160)
    assert ending.audio == 40 and ending.underrun == 0, "the rest of the frame is after the end"
    assert ending.reached == [Reached("end", "a", played=140)]
    assert buffer.playing is None and buffer.idle
    assert buffer.read(160).underrun == 0, "idle after the end"
    assert buffer.underrun_total == 60 + 160


def test_a_frame_across_two_utterances_names_both() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.push(ramp(1, 60), "a")
    buffer.end("a")
    buffer.push(ramp(61, 60), "b")
    frame = buffer.read(100)
    assert frame.tags == ["a", "b"] and frame.audio == 100
    assert np.array_equal(frame.samples, ramp(1, 100))
    assert frame.reached == [Reached("end", "a", played=60)]
    assert buffer.playing == "b" and buffer.played == {"a": 60, "b": 40}


def test_marks_are_reached_exactly_where_they_were_placed() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.mark("before", "a")  # before any audio: reached by the first read, at 0 samples
    buffer.push(ramp(1, 100), "a")
    buffer.mark("middle", "a")
    buffer.push(ramp(101, 50), "a")
    buffer.end("a")
    first = buffer.read(100)
    # The frame is full exactly at the mark: the mark is still reached by this read, not the next.
    assert first.reached == [Reached("mark", "a", "before", 0), Reached("mark", "a", "middle", 100)]
    second = buffer.read(100)
    assert second.reached == [Reached("end", "a", played=150)] and second.audio == 50
    assert buffer.read(100).reached == [], "each mark and end is reached once"


def test_clear_drops_everything_queued_and_names_who_lost_audio() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.push(ramp(1, 100), "a")
    buffer.end("a")
    buffer.push(ramp(1, 100), "b")
    buffer.mark("m", "b")
    buffer.read(50)
    assert buffer.clear() == ["a", "b"]
    assert buffer.buffered == 0 and buffer.idle and buffer.playing is None
    after = buffer.read(100)
    assert after.audio == 0 and after.underrun == 0 and after.reached == [], "no mark or end survives a clear"
    assert buffer.played == {"a": 50}, "what was heard stays counted"


def test_clear_names_the_playing_utterance_even_with_nothing_left_queued() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.push(ramp(1, 100), "a")
    buffer.read(100)  # all of its audio played, its end not yet pushed
    buffer.push(ramp(1, 10), "b")
    assert buffer.clear() == ["a", "b"]
    assert buffer.clear() == [], "nothing playing, nothing queued"


def test_played_counts_per_tag_until_forgotten() -> None:
    buffer = PlayoutBuffer(8000)
    buffer.push(ramp(1, 30), "a")
    buffer.push(ramp(1, 50), "b")
    buffer.read(40)
    assert buffer.played == {"a": 30, "b": 10}
    buffer.forget("a")
    buffer.forget("never-played")
    assert buffer.played == {"b": 10}


def test_on_data_fires_for_everything_queued_except_empty_audio() -> None:
    buffer = PlayoutBuffer(8000)
    calls: list[int] = []
    buffer.on_data = lambda: calls.append(buffer.buffered)
    buffer.push(np.zeros(0, np.float32), "a")
    assert calls == [] and buffer.idle, "an empty push queues nothing"
    buffer.push(ramp(1, 10), "a")
    buffer.mark("m", "a")
    buffer.end("a")
    assert calls == [10, 10, 10]
    assert not buffer.idle
