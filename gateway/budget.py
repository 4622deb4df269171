"""How much audio one request may produce: a few times what its text takes to say.

A text's length bounds its speech only loosely (numbers expand when spoken,
a model can fail to stop), so every engine stream gets a budget: ``HEADROOM``
times an estimate from the text, never under ``FLOOR_SECONDS``, divided by
the speed. A stream that runs past it ends with an error instead of holding
a worker for minutes (4 KB of digit groups once made 21 minutes of audio).
"""

from __future__ import annotations

import re

from cosyvoice import Mode, SynthesisRequest

# Ordinary speech: ~14 characters a second for alphabetic scripts (the embedded voice reads
# 15-16), ~4 a second for Chinese, Japanese and Korean, where one character is a syllable.
SECONDS_PER_CHAR = 0.07
SECONDS_PER_SYLLABIC_CHAR = 0.3
# Room for what the estimate misses: digits read one by one ("5 5 5 1 2" takes ~0.2 s a
# character), slow voices, long pauses at punctuation.
HEADROOM = 3.0
FLOOR_SECONDS = 10.0  # short texts: a number, a name spelled out
# Voice conversion speaks the source audio again: its length, with room for a slower voice.
VC_HEADROOM = 1.5
_SYLLABIC = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def expected_seconds(text: str) -> float:
    """About how long ``text`` takes to say at speed 1."""
    syllabic = len(_SYLLABIC.findall(text))
    return syllabic * SECONDS_PER_SYLLABIC_CHAR + (len(text.strip()) - syllabic) * SECONDS_PER_CHAR


def audio_budget(request: SynthesisRequest) -> float:
    """The most seconds of audio ``request`` may produce."""
    if request.mode is Mode.VC and request.source_audio is not None:
        return max(FLOOR_SECONDS, request.source_audio.duration * VC_HEADROOM) / request.speed
    return max(FLOOR_SECONDS, HEADROOM * expected_seconds(request.text)) / request.speed
