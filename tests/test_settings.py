"""Settings layers: defaults, config.toml, GATEWAY_* environment, CLI flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cosyvoice.embedded import EmbeddedOptions
from cosyvoice.text import ClauseOptions
from gateway.__main__ import flag_overrides, parse_args
from gateway.engines import clause_options, options_from
from gateway.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_config_toml_documents_every_setting_with_its_default() -> None:
    text = (ROOT / "config.toml").read_text()
    data = tomllib.loads(text)
    defaults = Settings().model_dump()
    assert data == defaults, "config.toml must list every setting with its default value"
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[number - 1].lstrip().startswith("#"), f"setting without a comment: {line!r}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 7000\nhost = "0.0.0.0"\n[embedded]\nworkers = 3\n')
    settings = load_settings(
        config,
        environ={"GATEWAY_SERVER_PORT": "9000", "GATEWAY_LIMITS_MAX_TEXT_CHARS": "123", "OTHER": "x"},
    )
    assert settings.server.port == 9000
    assert settings.server.host == "0.0.0.0"
    assert settings.embedded.workers == 3
    assert settings.limits.max_text_chars == 123


def test_flags_override_the_environment() -> None:
    args = parse_args(["--port", "9100", "--model_dir", "/models/v2", "--gpu", "--data-dir", "/srv/voices"])
    settings = load_settings(None, environ={"GATEWAY_SERVER_PORT": "9000"}, overrides=flag_overrides(args))
    assert settings.server.port == 9100
    assert settings.engine.model_dir == "/models/v2"
    assert settings.engine.device == "cuda:0"
    assert settings.paths.data_dir == "/srv/voices"
    assert load_settings(None, environ={}, overrides=flag_overrides(parse_args(["--gpu", "2"]))).engine.device == "cuda:2"


@pytest.mark.parametrize(
    "environ,message",
    [
        ({"GATEWAY_NOSUCH_KEY": "1"}, "no settings section matches"),
        ({"GATEWAY_SERVER_PROT": "1"}, "server.prot"),
        ({"GATEWAY_SERVER_PORT": "eighty"}, "server.port"),
        ({"GATEWAY_EMBEDDED_WORKERS": "0"}, "embedded.workers"),
    ],
)
def test_bad_environment_is_a_clear_error(environ: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, environ=environ)


def test_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = 80\ncolour = 'red'\n")
    with pytest.raises(SettingsError, match="server.colour"):
        load_settings(config, environ={})
    config.write_text("[server\n")
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_engine_options_come_from_settings_with_the_same_defaults() -> None:
    """Each engine option has a setting of its name, and its default is the setting's: none silently diverges."""
    torch_engine = pytest.importorskip("cosyvoice.runtime.engine")
    settings = Settings()
    assert options_from(EmbeddedOptions, settings.embedded) == EmbeddedOptions()
    cosyvoice = options_from(torch_engine.CosyVoiceOptions, settings.cosyvoice, model_dir="m", device="auto")
    assert cosyvoice == torch_engine.CosyVoiceOptions(model_dir="m")
    assert clause_options(settings) == ClauseOptions()
    custom = Settings.model_validate({"engine": {"first_clause_chars": 5, "max_clause_chars": 99}})
    assert clause_options(custom) == ClauseOptions(first_clause_chars=5, max_chars=99)
