"""``python -m gateway``: run the gateway server.

Flags override the environment (``GATEWAY_<SECTION>_<KEY>``), which
overrides the config file, which overrides the built-in defaults.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import create_app, drain
from gateway.connections import server_options
from gateway.redaction import RedactSecrets
from gateway.request_id import RequestIdLogFilter
from gateway.settings import SettingsError, load_settings

DEFAULT_CONFIG = Path("config.toml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="CosyVoice real-time voice gateway")
    parser.add_argument(
        "--config",
        help="TOML config file (default: $GATEWAY_CONFIG, else ./config.toml when it exists)",
    )
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="port to listen on")
    parser.add_argument("--model_dir", "--model-dir", dest="model_dir", help="CosyVoice model directory")
    parser.add_argument(
        "--gpu", nargs="?", type=int, const=0, metavar="INDEX", help="run the engine on CUDA device INDEX (default 0)"
    )
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", help="where voices and other state live")
    parser.add_argument("--audiosocket-port", type=int, help="serve Asterisk AudioSocket calls on this TCP port")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The CLI flags as settings layers (only those given)."""
    chosen = {
        ("server", "host"): args.host,
        ("server", "port"): args.port,
        ("server", "log_level"): args.log_level,
        ("engine", "model_dir"): args.model_dir,
        ("engine", "device"): None if args.gpu is None else f"cuda:{args.gpu}",
        ("paths", "data_dir"): args.data_dir,
        ("telephony", "audiosocket_port"): args.audiosocket_port,
    }
    overrides: dict[str, dict[str, Any]] = {}
    for (section, key), value in chosen.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return overrides


def config_file(args: argparse.Namespace) -> str | None:
    if args.config:
        return args.config
    if os.environ.get("GATEWAY_CONFIG"):
        return os.environ["GATEWAY_CONFIG"]
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = load_settings(config_file(args), overrides=flag_overrides(args))
    except SettingsError as error:
        sys.exit(f"error: {error}")
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())
        handler.addFilter(RedactSecrets())
    try:
        app = create_app(settings)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    server = settings.server
    config = uvicorn.Config(
        app, host=server.host, port=server.port, log_level=server.log_level, log_config=log_config(), **server_options(server)
    )
    GatewayServer(config, app, settings.server.shutdown_grace).run()


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with each access line ending in the request's ``x-request-id``, and keys masked."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdLogFilter}, "redact": {"()": RedactSecrets}}
    config["handlers"]["access"]["filters"] = ["request_id", "redact"]
    config["handlers"]["default"]["filters"] = ["redact"]
    config["formatters"]["access"]["fmt"] += " [%(request_id)s]"
    return config


class GatewayServer(uvicorn.Server):
    """uvicorn, with a drain first on SIGTERM/SIGINT: stop accepting, let sessions finish, then close."""

    def __init__(self, config: uvicorn.Config, app, grace: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace = grace

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        await drain(self.app, self.grace)
        await super().shutdown(sockets)


if __name__ == "__main__":
    main()
