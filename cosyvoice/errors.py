"""Errors an engine raises; transports map them to their own status codes."""


class SynthesisError(Exception):
    """Base of every error the engine layer raises on purpose."""


class InvalidRequest(SynthesisError):
    """The request cannot be served as asked (a client error: HTTP 400)."""


class UnsupportedMode(InvalidRequest):
    """The loaded engine cannot do the requested mode."""


class UnknownVoice(InvalidRequest):
    """The voice id names neither a built-in nor a saved voice."""


class EngineUnavailable(SynthesisError):
    """The engine is not loaded yet or has shut down (HTTP 503)."""


class EngineFailure(SynthesisError):
    """The engine failed while producing audio (a server fault)."""


class AudioTooLong(EngineFailure):
    """A stream ran far past what its text takes to say (runaway generation, or text that expands without end)."""


class VoiceNotFound(SynthesisError):
    """No saved voice has this id (HTTP 404 on the voice routes)."""


class VoiceExists(SynthesisError):
    """A voice with this id already exists (HTTP 409)."""
