"""The clean-room CosyVoice networks for v1/v2/v3 and their loader (the engine is :mod:`cosyvoice.runtime.engine`).

Importing this package needs torch (the ``cosyvoice`` extra); the gateway imports
it only when a model directory is configured.
"""
