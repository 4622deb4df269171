"""The media layer: PCM in; frames, packets and containers out, at real-time pace.

Knows nothing of the engine's internals or of any transport's protocol.
"""
