"""Settings: defaults < ``config.toml`` < ``GATEWAY_<SECTION>_<KEY>`` environment < CLI flags.

Every setting lives in one section model below; ``config.toml`` at the
project root documents each of them. Unknown sections or keys are errors, so
a typo in a config file or an environment variable is caught at start-up.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "GATEWAY_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    cors_origins: list[str] = []
    shutdown_grace: float = Field(10.0, ge=0)
    request_head_timeout: float = Field(10.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    websocket_compression: bool = False


class EngineSettings(Section):
    model_dir: str = ""
    device: str = "auto"
    replay_audio: str = ""
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_app: str = "cosyvoice"
    first_clause_chars: int = Field(10, ge=1)
    clause_chars: int = Field(120, ge=1)
    max_clause_chars: int = Field(240, ge=16)


class CosyVoiceSettings(Section):
    normalize_text: bool = True
    threads: int = Field(0, ge=0)
    onnx_threads: int = Field(1, ge=1)
    first_hop: int = Field(15, ge=1)
    max_hop: int = Field(100, ge=25)
    llm_backend: Literal["torch", "vllm"] = "torch"
    max_batch: int = Field(16, ge=1, le=1024)
    prefill_chunk: int = Field(64, ge=1)
    vllm_memory: float = Field(0.5, gt=0, le=1)
    prompt_cache_mb: int = Field(1024, ge=0)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    kv_cache: Literal["dynamic", "static"] = "dynamic"
    text_streaming: bool = False  # sessions feed an utterance's text to v2/v3 as it arrives (one decoding)


class EmbeddedSettings(Section):
    workers: int = Field(2, ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1, le=64)
    voice_model: str = ""
    start_timeout: float = Field(60.0, gt=0)


class PoolSettings(Section):
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_streams: float = Field(8.0, gt=0)
    target_queued_first_audio: float = Field(2.0, gt=0)
    max_ongoing_streams: int = Field(32, ge=1)
    gpus_per_replica: float = Field(0.0, ge=0)
    cpus_per_replica: float = Field(0.0, ge=0)
    drain_seconds: float = Field(20.0, ge=0)
    start_timeout: float = Field(120.0, gt=0)
    stall_timeout: float = Field(15.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)
    edge_url: str = ""


class SessionSettings(Section):
    idle_timeout: float = Field(120.0, gt=0)
    lead_ms: int = Field(100, ge=0, le=2000)
    opus_bitrate: int = Field(32000, ge=6000, le=510000)
    max_lead_seconds: float = Field(10.0, gt=0)


class WebRTCSettings(Section):
    ice_servers: list[str] = []
    host_addresses: list[str] = []
    connect_timeout: float = Field(15.0, gt=0)  # seconds from the answer until the peer must have connected


class TelephonySettings(Section):
    twilio_auth_token: str = ""
    twilio_shared_key_secret: str = ""
    telnyx_public_key: str = ""  # base64 Ed25519 key from the Telnyx portal: TeXML webhooks must carry its signature
    signalwire_signing_key: str = ""  # SignalWire signs LaML webhooks with Twilio's scheme and this key
    plivo_auth_token: str = ""  # Plivo XML webhooks must carry X-Plivo-Signature-V3 made with this token
    jambonz_webhook_secret: str = ""  # jambonz signs its webhooks (Jambonz-Signature) with the account's webhook secret
    vonage_signature_secret: str = ""  # Vonage signs its webhooks with a JWT keyed with the account's signature secret
    public_url: str = ""
    audiosocket_host: str = "127.0.0.1"
    audiosocket_port: int = Field(0, ge=0, le=65535)
    audiosocket_greeting: str = ""
    barge_in: bool = True
    owner: str = ""  # the API key name whose tenant owns phone calls; empty: only admin keys steer them


class PathSettings(Section):
    data_dir: str = "data"
    prompt_dir: str = ""


class LimitSettings(Section):
    max_text_chars: int = Field(4096, ge=1)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_syntheses: int = Field(16, ge=1)
    queue_size: int = Field(32, ge=0)
    queue_timeout: float = Field(10.0, ge=0)
    request_timeout: float = Field(300.0, gt=0)
    max_websocket_sessions: int = Field(100, ge=0)
    max_webrtc_sessions: int = Field(30, ge=0)
    max_telephony_sessions: int = Field(100, ge=0)
    max_session_text_chars: int = Field(4096, ge=1)
    max_utterance_chars: int = Field(20_000, ge=1)
    max_queued_clauses: int = Field(1000, ge=1)


class AuthSettings(Section):
    api_keys: list[str] = []
    admin_keys: list[str] = []  # keys that see and steer every tenant's sessions and voices
    keys_file: str = ""
    requests_per_minute: int = Field(0, ge=0)
    max_sessions_per_key: int = Field(0, ge=0)
    health_public: bool = True
    metrics_public: bool = False


class Settings(Section):
    server: ServerSettings = ServerSettings()
    engine: EngineSettings = EngineSettings()
    cosyvoice: CosyVoiceSettings = CosyVoiceSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    pool: PoolSettings = PoolSettings()
    session: SessionSettings = SessionSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    telephony: TelephonySettings = TelephonySettings()
    paths: PathSettings = PathSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()

    @property
    def data_dir(self) -> Path:
        return Path(self.paths.data_dir).expanduser().resolve()


class SettingsError(ValueError):
    """A config file, environment variable or flag has a bad value."""


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge the layers into a validated :class:`Settings`.

    ``overrides`` are CLI flags as ``{section: {key: value}}``.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SettingsError(f"cannot read config file {path}: {error}") from error
    _merge(data, _from_environment(environ))
    _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from error


def _from_environment(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    sections = Settings.model_fields
    found: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise SettingsError(f"{name}: no settings section matches (sections: {', '.join(sections)})")
        found.setdefault(section, {})[rest[len(section) + 1 :]] = _parse_env_value(value)
    return found


def _parse_env_value(value: str) -> Any:
    """Lists and tables as JSON; scalars stay strings, which the models coerce."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except ValueError as error:
            raise SettingsError(f"not valid JSON: {value!r}") from error
    return value


def _merge(into: dict[str, dict[str, Any]], layer: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in layer.items():
        if not isinstance(values, Mapping):
            raise SettingsError(f"[{section}] must be a table of settings")
        into.setdefault(section, {}).update(values)


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {item['msg']}")
    return "invalid settings: " + "; ".join(problems)
