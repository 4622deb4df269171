"""The gateway process: app, settings, routes, CLI. Wires the engine to the transports."""

__version__ = "0.1.0"
NAME = "cosyvoice-gateway"
