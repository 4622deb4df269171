"""The clean-room CosyVoice engine: model code for v1/v2/v3, the loader, and the engine.

Importing this package needs torch (the ``cosyvoice`` extra); the gateway imports
it only when a model directory is configured.
"""
