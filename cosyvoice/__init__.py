"""The synthesis engine layer: requests in, async streams of mono PCM out.

Knows nothing of HTTP, WebRTC or sockets. Every transport consumes the one
contract in :mod:`cosyvoice.engine`.
"""

from cosyvoice.engine import (
    Audio,
    AudioStream,
    Capabilities,
    Engine,
    Mode,
    SavedVoice,
    SpeechParams,
    SynthesisRequest,
)
from cosyvoice.errors import (
    AudioTooLong,
    EngineFailure,
    EngineUnavailable,
    InvalidRequest,
    SynthesisError,
    UnknownVoice,
    UnsupportedMode,
    VoiceExists,
    VoiceNotFound,
)
from cosyvoice.timing import TimingSource, WordTiming

__all__ = [
    "Audio",
    "AudioStream",
    "AudioTooLong",
    "Capabilities",
    "Engine",
    "EngineFailure",
    "EngineUnavailable",
    "InvalidRequest",
    "Mode",
    "SavedVoice",
    "SpeechParams",
    "SynthesisError",
    "SynthesisRequest",
    "TimingSource",
    "UnknownVoice",
    "UnsupportedMode",
    "VoiceExists",
    "VoiceNotFound",
    "WordTiming",
]
