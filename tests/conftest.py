"""Shared fixtures: one real gateway (embedded voice) for the whole session."""

from __future__ import annotations

import pytest

from gateway.settings import Settings
from tests.servers import ServerThread


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings.model_validate({"paths": {"data_dir": str(data_dir)}, "limits": {"max_text_chars": 2000}})
    server = ServerThread(settings).start()
    yield server
    server.stop()
