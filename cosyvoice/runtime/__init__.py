"""The low-latency CosyVoice runtime: the engine, its sessions, their streaming schedule, and the scheduler.

Every clause in flight is a :class:`~cosyvoice.runtime.session.Session`. Two
worker threads serve all of them: one advances the language model for every
active session by one token per step (continuous batching), the other renders
ready chunks (flow + vocoder) for several sessions at once, the sessions
closest to running out of audio first. See docs/cosyvoice.md.
"""
