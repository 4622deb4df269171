"""The embedded CPU voice: Piper in worker processes (see :mod:`cosyvoice.embedded.engine`)."""

from cosyvoice.embedded.engine import EmbeddedEngine, EmbeddedOptions

__all__ = ["EmbeddedEngine", "EmbeddedOptions"]
