"""Barge-in: caller speech starts and stops, cancels what we are saying, and our own echo does not count.

Most tests replace Silero with a detector that reads each window's verdict
from the window itself, so the state machine sees exactly the windows the
test means; the last ones run the real model on the embedded voice's speech.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from media.resample import resample
from media.vad import SpeechDetector
from signaling.bargein import BargeIn
from signaling.messages import BargeInEvent, Event, EventKind, UtteranceState
from signaling.session import Session, Transport
from support.waiting import until
from tests.unit.scripted import Script

RATE = 8000
WINDOW = 256  # Silero's window at 8 kHz: 32 ms


class Verdicts:
    """Stands in for Silero: a window's first sample is its speech probability, the rest set its level."""

    window_seconds = WINDOW / RATE

    def quiet(self, samples: np.ndarray) -> bool:
        return False  # always the detection thread, as the model would take

    def process(self, samples: np.ndarray) -> list[tuple[float, float]]:
        return [(float(w[0]), float(np.sqrt(np.mean(w[1:] ** 2)))) for w in samples.reshape(-1, WINDOW)]


class Counted:
    """A detector whose ``decided`` counts the windows barge-in has acted on.

    ``process`` runs in the detection thread, but its results are handed back as
    a generator that barge-in iterates on the event loop, so the count moves
    only once each window's decision has been made.
    """

    def __init__(self, detector) -> None:
        self.detector = detector
        self.window_seconds = detector.window_seconds
        self.decided = 0
        self.probabilities: list[float] = []

    def quiet(self, samples: np.ndarray) -> bool:
        return self.detector.quiet(samples)

    def process(self, samples: np.ndarray):
        results = self.detector.process(samples)

        def decide():
            for probability, level in results:
                yield probability, level
                self.probabilities.append(probability)
                self.decided += 1

        return decide()


def window(probability: float, level: float = 0.3) -> np.ndarray:
    samples = np.full(WINDOW, level, np.float32)
    samples[0] = probability
    return samples


SPEECH, QUIET = window(0.9), window(0.1)


class Call:
    """A session with barge-in on, and what it emitted."""

    def __init__(self, session: Session, barge: BargeIn, detector: Counted) -> None:
        self.session, self.barge, self.detector = session, barge, detector
        self.events: list[Event] = []
        session.events.tap = self.events.append

    async def hear(self, *windows: np.ndarray) -> None:
        """The caller sends these windows; returns once every one has been decided."""
        target = self.detector.decided + sum(len(w) for w in windows) // WINDOW
        self.barge.heard(np.concatenate(windows))
        await until(lambda: self.detector.decided == target, 5, "detection")

    def kinds(self) -> list[EventKind]:
        return [event.kind for event in self.events]

    def barge_in(self) -> BargeInEvent:
        (event,) = [event for event in self.events if isinstance(event, BargeInEvent)]
        return event


async def open_call(detector=None, **options) -> Call:
    session = Session(Script(), transport=Transport.TWILIO, output_rate=RATE)
    barge = BargeIn(session, RATE, **options)
    counted = Counted(detector or Verdicts())
    barge.detector = counted
    return Call(session, barge, counted)


@pytest.fixture
async def call():
    call = await open_call()
    yield call
    call.barge.close()
    await call.session.close()


async def test_two_windows_of_speech_over_an_utterance_cancel_it(call: Call) -> None:
    utterance = call.session.say("Let me tell you all about it.")
    await call.hear(QUIET, QUIET, QUIET)
    await call.hear(SPEECH)  # 32 ms: shorter than min_speech (60 ms)
    assert call.kinds() == ["utterance.started"]
    await call.hear(SPEECH)
    assert call.kinds() == ["utterance.started", "speech.started", "utterance.cancelled", "audio.cleared", "barge_in"]
    assert call.barge_in().utterances == ("u1",) and call.barge_in().since_onset_ms >= 0
    assert utterance.state is UtteranceState.CANCELLED and call.barge.barge_ins == 1 and call.barge.speaking


async def test_speech_while_we_are_quiet_is_reported_but_cancels_nothing(call: Call) -> None:
    await call.hear(SPEECH, SPEECH)
    assert call.kinds() == ["speech.started"] and call.barge.barge_ins == 0
    await call.hear(*[QUIET] * 9)  # 288 ms: shorter than min_silence (300 ms)
    assert call.kinds() == ["speech.started"]
    await call.hear(QUIET)
    assert call.kinds() == ["speech.started", "speech.stopped"] and not call.barge.speaking
    await call.hear(SPEECH, SPEECH)
    assert call.kinds() == ["speech.started", "speech.stopped", "speech.started"]


async def test_isolated_windows_of_speech_are_not_speech(call: Call) -> None:
    call.session.say("Still talking here.")
    await call.hear(*[SPEECH, QUIET] * 10)
    assert call.kinds() == ["utterance.started"] and call.session.speaking


async def test_caller_audio_under_our_own_level_is_echo() -> None:
    call = await open_call(echo_margin_db=6.0, echo_window=0.05)
    try:
        call.session.say("Our voice goes out at a level of 0.5.")
        call.barge.sent(np.full(160, 0.5, np.float32))
        # 6 dB under 0.5 is 0.25: a window at 0.2 is our echo, whatever the model says.
        await call.hear(*[window(0.9, level=0.2)] * 5)
        assert "speech.started" not in call.kinds()
        await call.hear(*[window(0.9, level=0.3)] * 2)
        assert call.kinds()[-1] == "barge_in", "louder than our echo can be: the caller"
    finally:
        call.barge.close()
        await call.session.close()


async def test_the_echo_reference_only_covers_the_last_echo_window() -> None:
    call = await open_call(echo_window=0.05)
    try:
        call.barge.sent(np.full(160, 0.5, np.float32))
        await asyncio.sleep(0.06)  # the loud frame is now older than the echo window
        call.barge.sent(np.zeros(160, np.float32))  # what we send now is silence
        await call.hear(*[window(0.9, level=0.2)] * 2)
        assert call.kinds() == ["speech.started"]
    finally:
        call.barge.close()
        await call.session.close()


async def test_a_backlog_keeps_the_newest_half_second(call: Call) -> None:
    # Audio arriving while nothing runs detection (the loop never yields here) piles up, up to 0.5 s.
    for _ in range(100):
        call.barge.heard(QUIET)
    kept = int(0.5 * RATE) // WINDOW  # whole windows under half a second
    assert call.barge.dropped_samples == (100 - kept) * WINDOW
    await until(lambda: call.detector.decided == kept, 5, "the backlog decided")
    await call.hear(SPEECH, SPEECH)
    assert call.kinds() == ["speech.started"], "detection goes on after a backlog"


# The real model, on real speech.


@pytest.fixture(scope="module")
def caller_speech() -> np.ndarray:
    """The embedded voice saying a sentence, at 8 kHz, from its first loud 20 ms on."""
    from cosyvoice import SynthesisRequest
    from cosyvoice.embedded import EmbeddedEngine, EmbeddedOptions

    async def render() -> tuple[np.ndarray, int]:
        engine = EmbeddedEngine(EmbeddedOptions(workers=1))
        await engine.start()
        try:
            async with engine.synthesize(SynthesisRequest(text="Hold on, I have a question about that.", seed=2)) as stream:
                return np.concatenate([chunk async for chunk in stream]), stream.sample_rate
        finally:
            await engine.close()

    samples, rate = asyncio.run(render())
    speech = resample(samples, rate, RATE)
    levels = np.sqrt(np.mean(speech[: len(speech) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    onset = int(np.argmax(levels > levels.max() / 10 ** (25 / 20)))  # the first frame within 25 dB of the loudest
    return speech[onset * 160 :]


async def real_call() -> Call:
    from media.vad import SpeechDetector

    return await open_call(SpeechDetector(RATE))


async def test_the_model_hears_speech_not_silence_or_line_noise(caller_speech: np.ndarray) -> None:
    call = await real_call()
    try:
        call.session.say("We are speaking when the caller starts.")
        line = np.random.default_rng(5).standard_normal(RATE).astype(np.float32) * 10 ** (-70 / 20)
        await call.hear(np.zeros(RATE, np.float32)[: RATE // WINDOW * WINDOW], line[: RATE // WINDOW * WINDOW])
        assert call.kinds() == ["utterance.started"], "a second of silence and of -70 dBFS noise is nobody talking"
        speech = caller_speech[: len(caller_speech) // WINDOW * WINDOW]
        await call.hear(speech)
        assert call.barge_in().utterances == ("u1",)
        await call.hear(np.zeros(RATE // WINDOW * WINDOW, np.float32))
        assert call.kinds()[-1] == "speech.stopped"
    finally:
        call.barge.close()
        await call.session.close()


async def test_the_model_does_not_take_our_echo_for_the_caller(caller_speech: np.ndarray) -> None:
    call = await real_call()
    try:
        call.session.say("Our own voice comes back from the line.")
        speech = caller_speech[: len(caller_speech) // WINDOW * WINDOW]
        for frame in speech[: len(speech) // 160 * 160].reshape(-1, 160):  # what we sent, all within the echo window
            call.barge.sent(frame)
        # Line echo returns 20 dB down; the guard's margin is 6 dB, so no echo window passes for the caller.
        await call.hear(speech * 10 ** (-20 / 20))
        assert max(call.detector.probabilities) >= 0.5, "the model does hear speech in the echo"
        assert call.kinds() == ["utterance.started"], "but the level says it is ours"
        await call.hear(speech)  # the caller, as loud as we are
        assert "barge_in" in call.kinds()
    finally:
        call.barge.close()
        await call.session.close()


def test_a_quiet_line_is_judged_without_the_model() -> None:
    """What ``quiet`` passes (run on the event loop) is audio the model would never see."""
    detector = SpeechDetector(RATE)
    hush = np.full(4 * WINDOW, 10 ** (-70 / 20), np.float32)
    assert detector.quiet(np.zeros(160, np.float32)) and detector.quiet(hush)
    assert all(probability == 0.0 for probability, _ in detector.process(hush))
    assert not detector.quiet(np.full(160, 0.01, np.float32)), "-40 dBFS goes to the model"
    detector.process(np.full(WINDOW // 2, 0.01, np.float32))  # half a loud window left pending
    assert not detector.quiet(np.zeros(160, np.float32)), "the pending half-window still needs the model"
